//! Verdicts and frame health in the daemon: blank, saturated and repeated
//! frames in a replay folder go to review, never to a class.

use std::collections::BTreeMap;
use std::path::Path;

use gcm_inspect::data::image_io::save_grey;
use gcm_inspect::data::synth::{self, Kind};
use gcm_inspect::pipeline::sink::log::LogLine;
use gcm_inspect::verdict::Verdict;

use crate::daemon_util::*;
use crate::util::p;

const SIZE: usize = 16;

/// Frames that fail no health check.
const HEALTHY: [&str; 5] = [
    "a_cell.png",
    "e_cell.png",
    "f_same_1.png",
    "f_same_2.png",
    "g_cell.png",
];

/// A replay folder under `root`: cells, an all-black, an all-white and a
/// uniform grey frame, and one cell three times in a row.
fn frames(root: &Path) -> std::path::PathBuf {
    let dir = root.join("frames");
    std::fs::create_dir_all(&dir).unwrap();
    let cell = |i: usize| synth::sample(11, i, SIZE, &[Kind::Crack, Kind::Ok]).1;
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("a_cell.png", cell(0)),
        ("b_black.png", vec![0; SIZE * SIZE]),
        ("c_white.png", vec![255; SIZE * SIZE]),
        ("d_grey.png", vec![128; SIZE * SIZE]),
        ("e_cell.png", cell(1)),
    ];
    // The same cell three times in a row: the third is a frozen source.
    for name in ["f_same_1.png", "f_same_2.png", "f_same_3.png"] {
        files.push((name, cell(2)));
    }
    files.push(("g_cell.png", cell(3)));
    for (name, px) in files {
        save_grey(&dir.join(name), SIZE, SIZE, px).unwrap();
    }
    dir
}

/// Runs the daemon over `frames` with the `decision:` section `decision`
/// (and a tiny model whose scaling is inverted, as the demo's); returns the
/// summary, the log lines and stderr.
fn replay(root: &Path, frames: &Path, decision: &str) -> (serde_json::Value, Vec<LogLine>, String) {
    let model = root.join("model");
    if !model.exists() {
        tiny_model(&model, 5);
    }
    let run = root.join(format!("run-{}", std::fs::read_dir(root).unwrap().count()));
    std::fs::create_dir_all(&run).unwrap();
    let src = format!("  replay:\n    dir: {}\n", frames.display());
    let cfg = config(&run, &model, &src, &format!("decision:\n{decision}"));
    let d = Daemon::start(&run, &["--config", p(&cfg)]);
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    (summary(&out), log_lines(&run), err)
}

/// The verdict and reason logged for `name`.
fn logged<'a>(lines: &'a [LogLine], name: &str) -> (&'a LogLine, Verdict, &'a str) {
    let l = lines
        .iter()
        .find(|l| l.source.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name}"));
    let v = l.verdict.expect("every line has a verdict");
    (l, v, l.reason.as_deref().expect("every line has a reason"))
}

/// The verdicts counted in the log, as the summary writes them.
fn counted(lines: &[LogLine]) -> serde_json::Value {
    let mut n: BTreeMap<&str, u64> = Verdict::ALL.iter().map(|v| (v.name(), 0)).collect();
    for l in lines {
        *n.get_mut(l.verdict.unwrap().name()).unwrap() += 1;
    }
    serde_json::to_value(n).unwrap()
}

#[test]
fn blank_saturated_and_repeated_frames_are_sent_to_review_with_their_reason() {
    let t = tempfile::tempdir().unwrap();
    let dir = frames(t.path());
    // crack rejects; no probability band: only health sends to review.
    let (s, lines, _) = replay(t.path(), &dir, "  reject_classes: [crack]\n");
    assert_eq!(s["decisions"].as_u64(), Some(9), "{s}");
    for (name, why) in [
        ("b_black.png", "frame dark: 100% of pixels at 0"),
        ("c_white.png", "frame saturated: 100% of pixels at 255"),
        ("d_grey.png", "frame flat: contrast 0.00 below 1"),
        (
            "f_same_3.png",
            "source frozen: the same frame 3 times in a row",
        ),
    ] {
        let (l, v, r) = logged(&lines, name);
        assert_eq!((v, r), (Verdict::Review, why), "{name}");
        // Still scored and logged: the scores are there, the class is not acted on.
        assert_eq!(l.scores.len(), CLASSES.len(), "{name}");
    }
    // The others get the class's verdict: ng for a crack, ok otherwise.
    for name in HEALTHY {
        let (l, v, r) = logged(&lines, name);
        let want = match l.class.as_str() {
            "crack" => Verdict::Ng,
            _ => Verdict::Ok,
        };
        assert_eq!(v, want, "{name}: {r}");
        assert!(
            r.starts_with(&format!("class {} p=", l.class)),
            "{name}: {r}"
        );
    }
    // The metrics' counts (in the run summary) match the log.
    let counts = &s["verdicts"];
    assert_eq!(counts["review"].as_u64(), Some(4), "{s}");
    assert_eq!(*counts, counted(&lines), "{s}");
    let health = serde_json::json!({
        "dark": 1, "saturated": 1, "flat": 1, "frozen": 1, "no_evidence": 0
    });
    assert_eq!(s["health_reviews"], health, "{s}");
    eprintln!(
        "verdict counts: {counts}; health reviews: {}",
        s["health_reviews"]
    );
}

/// The case that started the checks: with the exposure and contrast checks
/// off, an all-white frame under inverted scaling scores exactly 0 for every
/// class; the argmax names the first class, the verdict stays `review`.
#[test]
fn a_frame_without_evidence_is_never_decided_as_the_first_class() {
    let t = tempfile::tempdir().unwrap();
    let dir = frames(t.path());
    let off = "  health:\n    max_dark_share: 1\n    max_saturated_share: 1\n    min_contrast: 0\n";
    // No reject_classes: nothing is ng, and start-up says so.
    let (s, lines, err) = replay(t.path(), &dir, off);
    assert!(
        err.contains("decision.reject_classes is empty") && err.contains("crack, ok"),
        "{err}"
    );
    let (white, v, r) = logged(&lines, "c_white.png");
    assert!(white.scores.iter().all(|&x| x == 0.0), "{:?}", white.scores);
    assert_eq!(white.class, CLASSES[0]);
    assert_eq!(v, Verdict::Review);
    assert_eq!(r, "no evidence: every score within 0.000001");
    let (_, v, r) = logged(&lines, "f_same_3.png");
    assert_eq!(v, Verdict::Review, "{r}");
    for name in ["b_black.png", "d_grey.png"].iter().chain(&HEALTHY) {
        let (l, v, r) = logged(&lines, name);
        assert_eq!(v, Verdict::Ok, "{name}: {r} {:?}", l.scores);
    }
    assert_eq!(
        s["verdicts"],
        serde_json::json!({"ok": 7, "ng": 0, "review": 2})
    );
    let health = serde_json::json!({
        "dark": 0, "saturated": 0, "flat": 0, "frozen": 1, "no_evidence": 1
    });
    assert_eq!(s["health_reviews"], health, "{s}");
}

/// The rules are reloaded with the model on SIGHUP: a reject class the model
/// does not have is refused (the running rules stay), a good one applies
/// from one frame on.
#[test]
fn sighup_reloads_the_decision_rules_and_refuses_unknown_classes() {
    let s = setup(6, &synthetic(100), "");
    let (root, cfg) = (s.root(), s.cfg.as_path());
    let text = std::fs::read_to_string(cfg).unwrap();
    let mut d = Daemon::start(root, &["--config", p(cfg)]);
    wait_for(60, "decisions", || count_lines(root) >= 3);
    std::fs::write(
        cfg,
        format!("{text}decision:\n  reject_classes: [scratch]\n"),
    )
    .unwrap();
    d.signal("HUP");
    d.wait_stderr(60, "\"scratch\" is not a class of the model");
    let seen = count_lines(root);
    wait_for(60, "decisions after the refused reload", || {
        count_lines(root) >= seen + 3
    });
    // Every class rejects now: whatever is not review is ng.
    std::fs::write(
        cfg,
        format!("{text}decision:\n  reject_classes: [crack, ok]\n"),
    )
    .unwrap();
    d.signal("HUP");
    d.wait_stderr(60, "reload accepted");
    wait_for(60, "an ng verdict", || {
        log_lines(root)
            .iter()
            .any(|l| l.verdict == Some(Verdict::Ng))
    });
    d.signal("INT");
    let (st, _, err) = d.wait(60);
    assert_eq!(st.code(), Some(0), "{err}");
    let verdicts: Vec<Verdict> = log_lines(root).iter().map(|l| l.verdict.unwrap()).collect();
    let switch = verdicts.iter().position(|&v| v == Verdict::Ng).unwrap();
    assert!(
        switch >= seen + 3,
        "ng before the good reload: {verdicts:?}"
    );
    assert!(
        verdicts[..switch].iter().all(|&v| v != Verdict::Ng),
        "{verdicts:?}"
    );
    assert!(
        verdicts[switch..].iter().all(|&v| v != Verdict::Ok),
        "{verdicts:?}"
    );
}
