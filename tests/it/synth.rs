use crate::util::*;

#[test]
fn synth_is_deterministic_per_seed_and_balanced() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    for (dir, seed) in [(&a, "7"), (&b, "7"), (&c, "8")] {
        let out = ok(&[
            "synth",
            "--out",
            p(dir),
            "--count",
            "12",
            "--seed",
            seed,
            "--size",
            "32",
        ]);
        assert!(out.contains("wrote 12 images"), "{out}");
    }
    let fa = files(&a);
    assert_eq!(fa.iter().filter(|f| f.ends_with(".png")).count(), 12);
    for class in ["crack", "inactive", "ok", "spot"] {
        assert_eq!(
            fa.iter()
                .filter(|f| f.starts_with(&format!("{class}/")))
                .count(),
            3
        );
    }
    let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
    let png = "ok/ok_00002.png";
    assert_eq!(read(&a, png), read(&b, png), "same seed, same image");
    assert_ne!(read(&a, png), read(&c, png), "other seed, other image");
}

#[test]
fn synth_refuses_unknown_class() {
    let t = tempfile::tempdir().unwrap();
    let err = fails(
        &["synth", "--out", p(t.path()), "--classes", "ok,scratch"],
        gcm_inspect::error::exit::USAGE,
    );
    assert!(err.contains("scratch"), "{err}");
}
