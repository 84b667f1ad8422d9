//! Property tests of the parsers that read what comes from outside the
//! process: daemon configs (YAML), training manifests (CSV), decision log
//! lines (the auditor's and the review page's readers), camera frames (GREY,
//! YUYV, RGB24, MJPEG) and model files (the card and the safetensors
//! header). Each is given arbitrary input and mutations of a valid one
//! (values swapped, lines dropped or doubled, bytes flipped, cut, spliced).
//! The properties: no panic, whatever the input; an error names where the
//! input came from (the config, manifest, log or weights file, and the line,
//! key or tensor where the parser knows it). A frame's errors name the
//! format's fault; the inference stage adds the frame id when it logs the
//! skip (`pipeline::infer`).
//!
//! Cases per property: `PROPTEST_CASES` if set, else [`CASES`] (kept small:
//! the suite runs in CI on two cores).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per property when `PROPTEST_CASES` is not set.
const CASES: u32 = 128;

fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs `f` and turns a panic into a test failure that shows the input.
fn no_panic<T>(what: &str, input: &dyn std::fmt::Debug, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what} panicked ({msg}) on {input:?}")
        }
    }
}

/// Byte-level mutations of a valid input.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Splice(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Splice(a, b)),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            break;
        }
        let at = |i: usize, b: &Vec<u8>| i % b.len();
        match e {
            Edit::Flip(i, x) => {
                let i = at(*i, &b);
                b[i] ^= x;
            }
            Edit::Cut(i) => b.truncate(at(*i, &b)),
            Edit::Insert(i, bytes) => {
                let i = at(*i, &b);
                b.splice(i..i, bytes.iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = at(*i, &b);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            // A copy of another stretch of the input over this one (a
            // duplicated segment, a repeated marker).
            Edit::Splice(a, c) => {
                let (a, c) = (at(*a, &b), at(*c, &b));
                let n = (b.len() - a.max(c)).min(32);
                let src = b[c..c + n].to_vec();
                b[a..a + n].copy_from_slice(&src);
            }
        }
    }
    b
}

mod config {
    use super::*;
    use crate::config::Loaded;

    const DEFAULT: &str = include_str!("../config/default.yaml");
    const CAMERA: &str = include_str!("../config/camera.example.yaml");

    /// Values a YAML key may be given: wrong types, edges, YAML's own syntax.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("~".to_string()),
            Just("-1".to_string()),
            Just("1e400".to_string()),
            Just(".nan".to_string()),
            Just("18446744073709551616".to_string()),
            Just("[".to_string()),
            Just("{a: 1}".to_string()),
            Just("[1, 2]".to_string()),
            Just("\"\"".to_string()),
            Just("&a 1".to_string()),
            Just("*a".to_string()),
            Just("!!binary AAAA".to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            "[ -~]{0,12}",
        ]
    }

    #[derive(Clone, Debug)]
    enum LineEdit {
        Value(usize, String),
        Drop(usize),
        Double(usize),
        Indent(usize, usize),
    }

    fn line_edits() -> impl Strategy<Value = Vec<LineEdit>> {
        let e = prop_oneof![
            4 => (any::<usize>(), value()).prop_map(|(i, v)| LineEdit::Value(i, v)),
            1 => any::<usize>().prop_map(LineEdit::Drop),
            1 => any::<usize>().prop_map(LineEdit::Double),
            1 => (any::<usize>(), 0usize..5).prop_map(|(i, n)| LineEdit::Indent(i, n)),
        ];
        prop::collection::vec(e, 1..4)
    }

    /// A config file's lines with `edits` applied to its key lines.
    fn edited(text: &str, edits: &[LineEdit]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let keys = |lines: &Vec<String>| -> Vec<usize> {
            (0..lines.len())
                .filter(|&i| {
                    let t = lines[i].trim_start();
                    !t.starts_with('#') && t.contains(':')
                })
                .collect()
        };
        for e in edits {
            let k = keys(&lines);
            if k.is_empty() {
                break;
            }
            match e {
                LineEdit::Value(i, v) => {
                    let i = k[i % k.len()];
                    let (key, _) = lines[i].split_once(':').unwrap();
                    lines[i] = format!("{key}: {v}");
                }
                LineEdit::Drop(i) => {
                    lines.remove(k[i % k.len()]);
                }
                LineEdit::Double(i) => {
                    let i = k[i % k.len()];
                    lines.insert(i, lines[i].clone());
                }
                LineEdit::Indent(i, n) => {
                    let i = k[i % k.len()];
                    lines[i] = format!("{}{}", " ".repeat(*n), lines[i].trim_start());
                }
            }
        }
        lines.join("\n") + "\n"
    }

    /// The config error of `text` read from `file`; None when it is accepted.
    fn read(file: &std::path::Path, text: &str) -> Option<String> {
        std::fs::write(file, text).unwrap();
        no_panic("config reader", &text, || Loaded::from_file(file))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn edited_configs_are_read_or_refused_naming_the_file_and_the_place() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("station-7.yaml");
        let name = file.display().to_string();
        let refused = std::cell::Cell::new(0u32);
        runner(CASES)
            .run(&(prop::bool::ANY, line_edits()), |(camera, edits)| {
                let text = edited(if camera { CAMERA } else { DEFAULT }, &edits);
                if let Some(e) = read(&file, &text) {
                    refused.set(refused.get() + 1);
                    prop_assert!(e.starts_with(&format!("config {name}: ")), "{e}");
                    // The place: a line, or the key when the file does
                    // not set it (a default that another key contradicts).
                    let placed = e.contains("line ")
                        || e.contains('`')
                        || e.split(": ").nth(1).is_some_and(|k| {
                            k.split(['.', '[', ' ']).next().is_some_and(|top| {
                                text.lines().any(|l| l.starts_with(&format!("{top}:")))
                                    || crate::config::line_of_key(&text, top).is_none()
                            })
                        });
                    prop_assert!(placed, "{e}\nfor\n{text}");
                }
                Ok(())
            })
            .unwrap();
        // The edits are not all harmless (the property saw refusals).
        assert!(refused.get() > 0, "no edited config was refused");
    }

    #[test]
    fn arbitrary_text_is_refused_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("any.yaml");
        let name = file.display().to_string();
        runner(CASES)
            .run(&"(\\PC|[\n:\\-\\[\\]{}&*!|>'\"#%@` ]){0,200}", |text| {
                if let Some(e) = read(&file, &text) {
                    prop_assert!(e.starts_with(&format!("config {name}: ")), "{e}");
                }
                Ok(())
            })
            .unwrap();
        // Bytes that are not UTF-8.
        std::fs::write(&file, b"model: \xff\xfe\n").unwrap();
        let e = Loaded::from_file(&file).unwrap_err().to_string();
        assert!(e.starts_with(&format!("config {name}: ")), "{e}");
    }
}

mod manifest {
    use super::*;
    use crate::data::dataset::Dataset;

    /// Text built from what a CSV manifest is made of.
    fn csv() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("path".to_string()),
            Just("label".to_string()),
            Just("split".to_string()),
            Just("train".to_string()),
            Just("val".to_string()),
            Just("test".to_string()),
            Just("a.png".to_string()),
            Just(",".to_string()),
            Just("\"".to_string()),
            Just("\"\"".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("\u{feff}".to_string()),
            Just(" ".to_string()),
            "\\PC{1,4}",
        ];
        prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
    }

    #[test]
    fn manifests_are_read_or_refused_naming_the_file_and_an_existing_line() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("set.csv");
        let name = file.display().to_string();
        let header = "path,label,split\n";
        runner(CASES)
            .run(&(prop::bool::ANY, csv()), |(with_header, body)| {
                let text = if with_header {
                    format!("{header}{body}")
                } else {
                    body
                };
                std::fs::write(&file, &text).unwrap();
                let r = no_panic("manifest reader", &text, || Dataset::open(&file));
                match r {
                    Ok(ds) => prop_assert!(!ds.samples.is_empty()),
                    Err(e) => {
                        let e = e.to_string();
                        prop_assert!(e.starts_with(&format!("data {name}: ")), "{e}");
                        if let Some(n) = e.split("line ").nth(1) {
                            let n: usize = n.split(':').next().unwrap().parse().unwrap();
                            prop_assert!(
                                n >= 1 && n <= text.lines().count(),
                                "{e}: the file has {} lines",
                                text.lines().count()
                            );
                        }
                    }
                }
                Ok(())
            })
            .unwrap();
        std::fs::write(&file, b"path,label\n\xff.png,ok\n").unwrap();
        let e = Dataset::open(&file).unwrap_err().to_string();
        assert!(e.contains(&name), "{e}");
    }
}

mod log_lines {
    use super::*;
    use crate::pipeline::sink::log::{example_line, LineError, LogLine, ACTIVE};
    use serde_json::{json, Value};

    /// JSON values of every kind, edges included.
    fn json_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(-1)),
            Just(json!(u64::MAX)),
            Just(json!(u64::MAX - 1)),
            Just(json!(1e300)),
            Just(json!("")),
            Just(json!([])),
            Just(json!({})),
            Just(json!(["ok"])),
            Just(json!(["ok", "crack", "spot"])),
            Just(json!([0.5, 0.25, 0.125])),
            Just(json!([1.0])),
            Just(json!(7)),
            Just(json!("gcm-inspect/log/1.9")),
            Just(json!("gcm-inspect/log/2.0")),
            Just(json!("gcm-inspect/log/x")),
            any::<u64>().prop_map(|v| json!(v)),
            "\\PC{0,8}".prop_map(|s| json!(s)),
        ]
    }

    const FIELDS: [&str; 14] = [
        "schema",
        "frame",
        "captured_unix_us",
        "class",
        "class_index",
        "classes",
        "scores",
        "probabilities",
        "margin",
        "verdict",
        "latency",
        "checks",
        "evidence",
        "divergent",
    ];

    /// A decision line with fields set to other values (or removed), then
    /// possibly mangled as bytes.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let field = (0..FIELDS.len(), prop::option::of(json_value()));
        (
            prop::collection::vec(field, 0..4),
            prop::option::weighted(0.3, edits()),
        )
            .prop_map(|(changes, bytes)| {
                let mut v = serde_json::to_value(example_line()).unwrap();
                v["evidence"] = Value::Null;
                for (k, val) in changes {
                    match val {
                        Some(val) => v[FIELDS[k]] = val,
                        None => {
                            v.as_object_mut().unwrap().remove(FIELDS[k]);
                        }
                    }
                }
                let text = v.to_string().into_bytes();
                match bytes {
                    Some(e) => apply(text, &e)
                        .into_iter()
                        .filter(|&b| b != b'\n')
                        .collect(),
                    None => text,
                }
            })
    }

    #[test]
    fn a_line_that_parses_is_a_consistent_decision() {
        runner(CASES * 2)
            .run(&line(), |bytes| {
                let text = String::from_utf8_lossy(&bytes);
                match no_panic("LogLine::parse", &text, || LogLine::parse(&text)) {
                    Ok(l) => {
                        let n = l.classes.len();
                        prop_assert!(n > 0 && l.class_index < n, "{text}");
                        prop_assert!(l.scores.len() == n && l.probabilities.len() == n, "{text}");
                    }
                    Err(LineError::NewerMajor(why)) => {
                        prop_assert!(why.contains("schema"), "{why}")
                    }
                    Err(LineError::NotDecision(why)) => prop_assert!(!why.is_empty()),
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn the_audit_and_the_review_read_any_log_naming_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join(ACTIVE);
        let name = file.display().to_string();
        runner(CASES / 2)
            .run(
                &(prop::collection::vec(line(), 1..6), prop::bool::ANY),
                |(lines, torn)| {
                    let mut bytes = lines.join(&b'\n');
                    if !torn {
                        bytes.push(b'\n');
                    }
                    std::fs::write(&file, &bytes).unwrap();
                    let shown = String::from_utf8_lossy(&bytes);
                    let mut audited = None;
                    match no_panic("audit::verify", &shown, || {
                        crate::audit::verify(d.path(), None)
                    }) {
                        Ok(r) => {
                            audited = Some(r.decisions);
                            for f in &r.foreign {
                                prop_assert!(f.starts_with(&format!("{name}:")), "{f}");
                                let n: usize = f[name.len() + 1..]
                                    .split(':')
                                    .next()
                                    .unwrap()
                                    .parse()
                                    .unwrap();
                                prop_assert!(n >= 1 && n <= lines.len(), "{f}");
                            }
                        }
                        Err(e) => {
                            let e = e.to_string();
                            prop_assert!(e.contains(&name), "{e}");
                        }
                    }
                    let labels = crate::review::labels::Labels::default();
                    let ix = no_panic("review index", &shown, || {
                        crate::review::index::Index::open(d.path()).map(|ix| {
                            let s = ix.summary(&labels, 48);
                            (s.decisions, ix.select(&Default::default(), &labels).len())
                        })
                    });
                    match ix {
                        // The page shows every decision the auditor counted.
                        Ok((decisions, listed)) => {
                            prop_assert_eq!(decisions as usize, listed);
                            if let Some(audited) = audited {
                                prop_assert_eq!(decisions, audited);
                            }
                        }
                        Err(e) => {
                            let e = e.to_string();
                            prop_assert!(e.contains(&name), "{e}");
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}

mod frames {
    use super::*;
    use crate::data::jpeg::{decode_jpeg, test_jpegs};
    use crate::preprocess::convert::{self, Buffer, ConvertError};

    /// Frame sizes as a driver may report them, sane and not.
    fn dim() -> impl Strategy<Value = u32> {
        prop_oneof![4 => 0u32..20, 1 => Just(u32::MAX), 1 => any::<u32>()]
    }

    fn stride() -> impl Strategy<Value = usize> {
        prop_oneof![4 => 0usize..64, 1 => Just(usize::MAX), 1 => any::<usize>()]
    }

    #[test]
    fn uncompressed_frames_convert_or_are_refused_as_short() {
        runner(CASES * 2)
            .run(
                &(
                    prop::collection::vec(any::<u8>(), 0..2048),
                    dim(),
                    dim(),
                    stride(),
                ),
                |(bytes, width, height, bytes_per_line)| {
                    let buf = Buffer {
                        bytes: &bytes,
                        width,
                        height,
                        bytes_per_line,
                    };
                    let input = (bytes.len(), width, height, bytes_per_line);
                    let results = [
                        no_panic("grey", &input, || {
                            convert::grey(buf).map(|i| i.dimensions())
                        }),
                        no_panic("yuyv_to_luma", &input, || {
                            convert::yuyv_to_luma(buf).map(|i| i.dimensions())
                        }),
                        no_panic("yuyv_to_rgb", &input, || {
                            convert::yuyv_to_rgb(buf).map(|i| i.dimensions())
                        }),
                        no_panic("rgb24", &input, || {
                            convert::rgb24(buf).map(|i| i.dimensions())
                        }),
                    ];
                    for r in results {
                        match r {
                            Ok(dims) => {
                                prop_assert!(width > 0 && height > 0);
                                prop_assert_eq!(dims, (width, height))
                            }
                            Err(ConvertError::Empty { .. }) => {
                                prop_assert!(width == 0 || height == 0)
                            }
                            Err(ConvertError::Short { have, need }) => {
                                prop_assert!(have < need && have == bytes.len(), "{have} {need}")
                            }
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn damaged_mjpeg_frames_decode_or_are_refused_as_corrupt() {
        let whole = [
            test_jpegs::encode(&test_jpegs::scene(24, 16, false)),
            test_jpegs::encode(&test_jpegs::scene(16, 8, true)),
        ];
        runner(CASES * 2)
            .run(&(0..whole.len(), edits()), |(k, e)| {
                let bytes = apply(whole[k].clone(), &e);
                let r = no_panic("mjpeg", &e, || convert::mjpeg(&bytes, 24, 16));
                if let Err(e) = r {
                    prop_assert!(
                        matches!(
                            e,
                            ConvertError::CorruptJpeg(_) | ConvertError::WrongSize { .. }
                        ),
                        "{e}"
                    );
                }
                Ok(())
            })
            .unwrap();
        runner(CASES)
            .run(&prop::collection::vec(any::<u8>(), 0..512), |mut bytes| {
                // Past the start marker, so the walk over the markers runs.
                bytes.splice(0..0, [0xFF, 0xD8]);
                let r = no_panic("decode_jpeg", &bytes, || decode_jpeg(&bytes));
                prop_assert!(r.is_err(), "random bytes decoded");
                Ok(())
            })
            .unwrap();
    }
}

mod model_files {
    use super::*;
    use crate::model::checkpoint::load_parts;
    use std::path::Path;

    const CARD: &str = include_str!("../weights/demo/model.json");
    const WEIGHTS: &[u8] = include_bytes!("../weights/demo/model.safetensors");

    /// The weights with the safetensors header (its length and JSON) edited
    /// and the data left as is.
    fn header_edits() -> impl Strategy<Value = Vec<u8>> {
        edits().prop_map(|e| {
            let n = u64::from_le_bytes(WEIGHTS[..8].try_into().unwrap()) as usize;
            let head = apply(WEIGHTS[..8 + n].to_vec(), &e);
            [&head[..], &WEIGHTS[8 + n..]].concat()
        })
    }

    #[test]
    fn damaged_weights_are_refused_naming_the_file() {
        let dir = Path::new("/models/station-7");
        runner(CASES)
            .run(&header_edits(), |bytes| {
                let r = no_panic("load_parts", &bytes.len(), || load_parts(dir, CARD, &bytes));
                if let Err(e) = r {
                    let e = e.to_string();
                    prop_assert!(
                        e.starts_with("model /models/station-7/model.safetensors: ")
                            || e.starts_with("model /models/station-7/model.json: weights_sha256"),
                        "{e}"
                    );
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn damaged_cards_are_refused_naming_the_card() {
        let dir = Path::new("/models/station-7");
        // Numbers of the architecture swapped for others, or the text mangled.
        let numbers: Vec<(usize, usize)> = {
            let b = CARD.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i].is_ascii_digit() && i > 0 && b[i - 1] == b' ' {
                    let s = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.push((s, i));
                }
                i += 1;
            }
            out
        };
        assert!(!numbers.is_empty());
        let number = prop_oneof![
            Just("0".to_string()),
            Just("18446744073709551615".to_string()),
            Just("4294967296".to_string()),
            Just("-3".to_string()),
            (0u64..100_000).prop_map(|v| v.to_string()),
        ];
        runner(CASES)
            .run(
                &(
                    0..numbers.len(),
                    number,
                    prop::option::weighted(0.3, edits()),
                ),
                |(k, v, e)| {
                    let (s, end) = numbers[k];
                    let mut card = format!("{}{v}{}", &CARD[..s], &CARD[end..]).into_bytes();
                    if let Some(e) = e {
                        card = apply(card, &e);
                    }
                    let text = String::from_utf8_lossy(&card);
                    let r = no_panic("load_parts", &text, || load_parts(dir, &text, WEIGHTS));
                    if let Err(e) = r {
                        let e = e.to_string();
                        prop_assert!(e.starts_with("model /models/station-7/model."), "{e}");
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}
