//! The files and the summary of `eval --sweep`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::curves::Curve;
use super::plot::{self, Plot};
use super::{
    at, choose, reject_mask, reject_score, row, sweep, verdict, Choice, Counts, Row, Scored,
};
use crate::config::DecisionConfig;
use crate::data::dataset::csv_field;
use crate::error::{IoContext, Result};

/// Everything the sweep found.
pub struct Outcome {
    pub classes: Vec<String>,
    /// The decision rules swept (`min_probability` aside).
    pub cfg: DecisionConfig,
    /// Whether each class is a reject class.
    pub reject: Vec<bool>,
    pub max_miss: f64,
    pub rows: Vec<Row>,
    /// The verdicts at the configured `min_probability`.
    pub current: Row,
    pub choice: Choice,
    pub curve: Curve,
}

impl Outcome {
    /// The sweep of `set` under `cfg` (its `min_probability` is the
    /// configured one), with the suggestion for `max_miss`.
    pub fn of(cfg: DecisionConfig, classes: &[String], set: &[Scored], max_miss: f64) -> Outcome {
        let reject = reject_mask(classes, &cfg.reject_classes);
        let frames: Vec<(f64, bool)> = set
            .iter()
            .map(|s| (reject_score(&s.decision, &reject), reject[s.label]))
            .collect();
        let rows = sweep(&cfg, set, &reject);
        let current = row(&cfg, set, &reject, cfg.min_probability);
        let choice = choose(&rows, max_miss).expect("the sweep has rows");
        Outcome {
            classes: classes.to_vec(),
            cfg,
            reject,
            max_miss,
            rows,
            current,
            choice,
            curve: Curve::of(&frames),
        }
    }
}

/// The files written into the output folder, in order.
pub const FILES: [&str; 6] = [
    "sweep.csv",
    "roc.csv",
    "pr.csv",
    "roc.png",
    "pr.png",
    "predictions.csv",
];

fn save(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text).at(path)
}

fn sweep_csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "threshold,precision,recall,miss_rate,false_reject_rate,review_rate,cost,\
         defect_ok,defect_ng,defect_review,good_ok,good_ng,good_review\n",
    );
    for r in rows {
        let c = &r.counts;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.threshold,
            c.precision(),
            c.recall(),
            c.miss_rate(),
            c.false_reject_rate(),
            c.review_rate(),
            c.cost(),
            c.defect_ok,
            c.defect_ng,
            c.defect_review,
            c.good_ok,
            c.good_ng,
            c.good_review
        );
    }
    s
}

fn roc_csv(c: &Curve) -> String {
    let mut s = String::from("threshold,false_positive_rate,true_positive_rate,tp,fp\n");
    for p in &c.points {
        let (fpr, tpr) = (p.fpr(c), p.tpr(c));
        let _ = writeln!(s, "{},{fpr},{tpr},{},{}", p.threshold, p.tp, p.fp);
    }
    s
}

fn pr_csv(c: &Curve) -> String {
    let mut s = String::from("threshold,recall,precision\n");
    for p in &c.points {
        let _ = writeln!(s, "{},{},{}", p.threshold, p.tpr(c), p.precision());
    }
    s
}

fn predictions_csv(o: &Outcome, set: &[Scored]) -> String {
    let mut s =
        String::from("path,label,predicted,probability,margin,reject_score,verdict,defective");
    for c in &o.classes {
        s += &format!(",score_{}", csv_field(c));
    }
    s.push('\n');
    let cfg = at(&o.cfg, o.choice.row.threshold);
    for f in set {
        let d = &f.decision;
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{}",
            csv_field(&f.path.to_string_lossy()),
            csv_field(&o.classes[f.label]),
            csv_field(&d.class),
            d.probabilities[d.class_index],
            d.margin,
            reject_score(d, &o.reject),
            verdict(&cfg, f).name(),
            o.reject[f.label]
        );
        for v in &d.scores {
            let _ = write!(s, ",{v}");
        }
        s.push('\n');
    }
    s
}

fn plots(dir: &Path, c: &Curve) -> Result<()> {
    let roc: Vec<(f64, f64)> = c.points.iter().map(|p| (p.fpr(c), p.tpr(c))).collect();
    let pr: Vec<(f64, f64)> = c.points[1..]
        .iter()
        .map(|p| (p.tpr(c), p.precision()))
        .collect();
    let roc_title = format!("ROC of the reject score (AUC {:.4})", c.roc_auc());
    let pr_title = format!(
        "Precision-recall of the reject score (AP {:.4})",
        c.average_precision()
    );
    plot::png(
        &dir.join("roc.png"),
        &Plot {
            title: &roc_title,
            x_label: "false reject rate (good frames flagged)",
            y_label: "recall (defective frames flagged)",
            points: &roc,
            diagonal: true,
        },
    )?;
    plot::png(
        &dir.join("pr.png"),
        &Plot {
            title: &pr_title,
            x_label: "recall",
            y_label: "precision",
            points: &pr,
            diagonal: false,
        },
    )
}

/// Writes [`FILES`] into `dir` (created if missing).
pub fn files(dir: &Path, o: &Outcome, set: &[Scored]) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    save(&dir.join("sweep.csv"), sweep_csv(&o.rows))?;
    save(&dir.join("roc.csv"), roc_csv(&o.curve))?;
    save(&dir.join("pr.csv"), pr_csv(&o.curve))?;
    plots(dir, &o.curve)?;
    save(&dir.join("predictions.csv"), predictions_csv(o, set))
}

#[derive(Serialize)]
struct Snippet<'a> {
    decision: SnippetDecision<'a>,
}

#[derive(Serialize)]
struct SnippetDecision<'a> {
    reject_classes: &'a [String],
    min_probability: f64,
    min_margin: f64,
}

/// The `decision:` keys to paste into a config, as YAML.
pub fn snippet(o: &Outcome) -> String {
    let s = Snippet {
        decision: SnippetDecision {
            reject_classes: &o.cfg.reject_classes,
            min_probability: o.choice.row.threshold,
            min_margin: o.cfg.min_margin,
        },
    };
    serde_yaml::to_string(&s).expect("plain values serialise")
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

fn rates(c: &Counts) -> String {
    format!(
        "miss {}, false reject {}, review {}, precision {}",
        pct(c.miss_rate()),
        pct(c.false_reject_rate()),
        pct(c.review_rate()),
        pct(c.precision())
    )
}

/// The lines for people: the set, the curves, no band, the suggestion.
pub fn summary(o: &Outcome) -> String {
    let first = &o.rows[0].counts;
    let mut s = format!(
        "sweep of decision.min_probability: {} images, {} defective ({}), {} good\n",
        first.total(),
        first.defective(),
        o.cfg.reject_classes.join(", "),
        first.good()
    );
    let _ = writeln!(
        s,
        "reject score (summed probability of the reject classes): ROC AUC {:.4}, \
         average precision {:.4}",
        o.curve.roc_auc(),
        o.curve.average_precision()
    );
    let _ = writeln!(s, "min_probability 0 (no band): {}", rates(first));
    let _ = writeln!(
        s,
        "min_probability {} (configured): {}",
        o.current.threshold,
        rates(&o.current.counts)
    );
    let c = &o.choice;
    let _ = writeln!(
        s,
        "suggested min_probability {}: {}",
        c.row.threshold,
        rates(&c.row.counts)
    );
    let _ = writeln!(
        s,
        "  rule: lowest (review + false reject) share among thresholds with miss <= {}; \
         the lowest threshold on a tie",
        pct(o.max_miss)
    );
    if !c.meets {
        let _ = writeln!(
            s,
            "warning: no threshold keeps the miss rate at or below {}: the lowest reachable \
             is {} (suggested above); the model or the reject classes need work",
            pct(o.max_miss),
            pct(c.row.counts.miss_rate())
        );
    }
    s
}
