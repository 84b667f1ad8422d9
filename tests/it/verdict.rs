//! Verdicts and frame health in the daemon: blank, saturated and repeated
//! frames in a replay folder go to review, never to a class.

use gcm_inspect::data::image_io::save_grey;
use gcm_inspect::data::synth::{self, Kind};
use gcm_inspect::verdict::Verdict;

use crate::daemon_util::*;
use crate::util::p;

#[test]
fn blank_saturated_and_repeated_frames_are_sent_to_review_with_their_reason() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 5);
    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let size = 16;
    let cell = |i: usize| synth::sample(11, i, size, &[Kind::Crack, Kind::Ok]).1;
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("a_cell.png", cell(0)),
        ("b_black.png", vec![0; size * size]),
        ("c_white.png", vec![255; size * size]),
        ("d_grey.png", vec![128; size * size]),
        ("e_cell.png", cell(1)),
    ];
    // The same cell three times in a row: the third is a frozen source.
    for name in ["f_same_1.png", "f_same_2.png", "f_same_3.png"] {
        files.push((name, cell(2)));
    }
    files.push(("g_cell.png", cell(3)));
    for (name, px) in &files {
        save_grey(&frames.join(name), size, size, px.clone()).unwrap();
    }
    let src = format!("  replay:\n    dir: {}\n", frames.display());
    // crack rejects; no probability band: only health sends to review.
    let extra = "decision:\n  reject_classes: [crack]\n";
    let cfg = config(root, &model, &src, extra);
    let d = Daemon::start(root, &["--config", p(&cfg)]);
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    assert_eq!(s["decisions"].as_u64(), Some(9), "{s}");
    let lines = log_lines(root);
    let got: Vec<(String, Verdict, String)> = lines
        .iter()
        .map(|l| {
            (
                l.source.clone().unwrap_or_default(),
                l.verdict.expect("every line has a verdict"),
                l.reason.clone().expect("every line has a reason"),
            )
        })
        .collect();
    let review = |name: &str, why: &str| {
        let (_, v, r) = got.iter().find(|g| g.0 == name).unwrap();
        assert_eq!(*v, Verdict::Review, "{name}: {r}");
        assert!(r.starts_with(why), "{name}: {r}");
    };
    review("b_black.png", "frame dark: 100% of pixels at 0");
    review("c_white.png", "frame saturated: 100% of pixels at 255");
    review("d_grey.png", "frame flat: contrast 0.00 below 1");
    review(
        "f_same_3.png",
        "source frozen: the same frame 3 times in a row",
    );
    // The others get the class's verdict: ng for a crack, ok otherwise.
    for (name, v, r) in &got {
        let l = lines
            .iter()
            .find(|l| l.source.as_deref() == Some(name))
            .unwrap();
        if !["b_black.png", "c_white.png", "d_grey.png", "f_same_3.png"].contains(&name.as_str()) {
            let want = if l.class == "crack" {
                Verdict::Ng
            } else {
                Verdict::Ok
            };
            assert_eq!(*v, want, "{name}: {r}");
            assert!(
                r.starts_with(&format!("class {} p=", l.class)),
                "{name}: {r}"
            );
        }
    }
    let counts = &s["verdicts"];
    let n = |k: &str| counts[k].as_u64().unwrap();
    assert_eq!(n("review"), 4, "{s}");
    assert_eq!(n("ok") + n("ng"), 5, "{s}");
    eprintln!("verdict counts: {counts}");
}
