//! Hostile conditions: full disks under the evidence and the decision log,
//! lines of other tools in the log, numbers no camera would take, and the
//! documented exit codes, each case the way an operator meets it.
//!
//! The full-disk tests mount a small tmpfs, which needs root (CI runs as
//! root). Without it they fail with a message saying so; set
//! `GCM_TEST_NO_MOUNT=1` to skip them on a workstation.

use std::path::{Path, PathBuf};

use crate::daemon_util::{
    evidence_dir, http_get, log_dir, metric, setup, summary, synthetic, tiny_model, wait_for,
    Daemon,
};
use crate::util::{fails, ok, p, run, synth};

/// A small tmpfs mounted over a fresh folder, unmounted when dropped.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallDisk {
    /// `None` (skip) only when `GCM_TEST_NO_MOUNT` is set.
    fn mount(kib: u64) -> Option<SmallDisk> {
        if std::env::var_os("GCM_TEST_NO_MOUNT").is_some() {
            eprintln!("GCM_TEST_NO_MOUNT is set: full-disk test skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("disk");
        std::fs::create_dir(&mnt).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&mnt)
            .status()
            .expect("mount runs");
        assert!(
            st.success(),
            "cannot mount a {kib} KiB tmpfs at {} (needs root; set GCM_TEST_NO_MOUNT=1 to skip)",
            mnt.display()
        );
        Some(SmallDisk { _dir: dir, mnt })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// Fills every free block with a filler file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.mnt.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let mut chunk = 64 << 10;
        while chunk > 0 {
            match f.write(&vec![0xAB; chunk]) {
                Ok(n) if n == chunk => {}
                Ok(_) => chunk /= 2,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => chunk /= 2,
                Err(e) => panic!("filling {}: {e}", p.display()),
            }
        }
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
    }
}

fn metrics_page(addr: &str) -> String {
    http_get(addr, "/metrics")
}

/// A config with its outputs at the given folders.
fn config_at(
    root: &Path,
    model: &Path,
    source: &str,
    log: &Path,
    ev: &Path,
    extra: &str,
) -> PathBuf {
    let text = format!(
        "model: {}\nsource:\n{source}\noutput:\n  log_dir: {}\n  evidence_dir: {}\n  log:\n    fsync_every_lines: 1\nmetrics:\n  listen: 127.0.0.1:0\n{extra}",
        model.display(),
        log.display(),
        ev.display(),
    );
    let p = root.join("daemon.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn lines_in(dir: &Path) -> Vec<gcm_inspect::pipeline::sink::log::LogLine> {
    let mut out = Vec::new();
    for f in gcm_inspect::pipeline::sink::log::log_files(dir).unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in a partial line",
            f.display()
        );
        for l in text.lines() {
            out.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")));
        }
    }
    out
}

/// Regression: a PNG write on a full evidence disk stopped inspection (exit 1).
#[test]
fn evidence_on_a_full_disk_is_skipped_with_a_reason_and_resumes() {
    // Large enough for the run's evidence; the quota never deletes any
    // (deleting would free blocks and split the failures into bursts).
    let Some(disk) = SmallDisk::mount(16 << 10) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 3);
    let log = root.join("log");
    let cfg = config_at(
        root,
        &model,
        &synthetic(40),
        &log,
        &disk.path("evidence"),
        "evidence:\n  all_frames: true\n",
    );
    let mut d = Daemon::start(root, &["--config", p(&cfg)]);
    let addr = d.metrics_addr();
    let value = |name: &str| metric(&metrics_page(&addr), name);
    wait_for(60, "evidence written", || {
        value("gcm_evidence_written_total") >= 5.0
    });
    let filler = disk.fill();
    wait_for(60, "evidence failures while decisions go on", || {
        value("gcm_evidence_write_failures_total") >= 10.0
    });
    let decided = value("gcm_log_lines_written_total");
    wait_for(30, "decisions while the evidence disk is full", || {
        value("gcm_log_lines_written_total") >= decided + 10.0
    });
    std::fs::remove_file(&filler).unwrap();
    let written = value("gcm_evidence_written_total");
    wait_for(60, "evidence kept again", || {
        value("gcm_evidence_written_total") >= written + 5.0
    });
    d.signal("TERM");
    let (st, out, err) = d.wait(60);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    let failures = s["evidence_write_failures"].as_u64().unwrap();
    assert!(failures >= 10, "{s}");
    assert_eq!(s["decisions_unlogged"].as_u64(), Some(0), "{s}");

    // Every decision logged; each says where its evidence is or why there is none.
    let lines = lines_in(&log);
    assert_eq!(lines.len() as u64, s["decisions"].as_u64().unwrap(), "{s}");
    let missing: Vec<_> = lines.iter().filter(|l| l.evidence.is_none()).collect();
    assert_eq!(missing.len() as u64, failures);
    for l in &missing {
        let why = l.evidence_error.as_deref().unwrap_or("");
        assert!(why.contains("No space left on device"), "{l:?}");
    }
    let last_missing = missing.last().unwrap().frame;
    assert!(lines
        .iter()
        .any(|l| l.frame > last_missing && l.evidence.is_some()));
    // One error for the burst, one line for the recovery; no half-written folders.
    assert_eq!(err.matches("evidence not kept:").count(), 1, "{err}");
    assert!(err.contains("evidence kept again"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(disk.path("evidence"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Regression: on ENOSPC the log ended in a partial line and the daemon
/// exited 1 without its summary, losing the decided frames without a count.
#[test]
fn a_full_log_disk_leaves_whole_lines_reports_503_and_catches_up() {
    let Some(disk) = SmallDisk::mount(2048) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 3);
    let log = disk.path("log");
    let cfg = config_at(
        root,
        &model,
        &synthetic(40),
        &log,
        &root.join("evidence"),
        "",
    );
    let mut d = Daemon::start(root, &["--config", p(&cfg)]);
    let addr = d.metrics_addr();
    let value = |name: &str| metric(&metrics_page(&addr), name);
    wait_for(60, "decisions logged", || {
        value("gcm_log_lines_written_total") >= 10.0
    });

    // Full: inspection goes on, lines wait, /healthz says why.
    let filler = disk.fill();
    wait_for(60, "/healthz to report the log", || {
        let h = http_get(&addr, "/healthz");
        h.starts_with("HTTP/1.1 503") && h.contains("decision log cannot be written")
    });
    let h = http_get(&addr, "/healthz");
    assert!(h.contains("No space left on device"), "{h}");
    let captured = value("gcm_frames_captured_total");
    wait_for(30, "frames decided while the log is full", || {
        value("gcm_log_backlog_lines") >= 20.0 && value("gcm_frames_captured_total") > captured
    });
    assert!(value("gcm_log_write_failures_total") >= 1.0);
    lines_in(&log); // whole lines only, while full

    // Space again: the backlog is written in order, health comes back.
    std::fs::remove_file(&filler).unwrap();
    wait_for(60, "the backlog written", || {
        value("gcm_log_backlog_lines") == 0.0
            && http_get(&addr, "/healthz").starts_with("HTTP/1.1 200")
    });
    assert_eq!(value("gcm_decisions_unlogged_total"), 0.0);

    // Full again, and stopped while full: the summary counts what was lost.
    let filler = disk.fill();
    wait_for(60, "lines waiting again", || {
        value("gcm_log_backlog_lines") >= 5.0
    });
    d.signal("TERM");
    let (st, out, err) = d.wait(60);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    let lines = lines_in(&log);
    let unlogged = s["decisions_unlogged"].as_u64().unwrap();
    assert!(unlogged >= 5, "{s}");
    assert_eq!(
        lines.len() as u64 + unlogged,
        s["decisions"].as_u64().unwrap(),
        "{s}"
    );
    assert!(
        err.contains("could not be written to the decision log"),
        "{err}"
    );
    for w in lines.windows(2) {
        assert!(
            w[0].frame < w[1].frame,
            "{} then {}",
            w[0].frame,
            w[1].frame
        );
    }

    // The next start on a disk with room continues after the logged ids.
    std::fs::remove_file(&filler).unwrap();
    let last = lines.last().unwrap().frame;
    let d = Daemon::start(root, &["--config", p(&cfg), "--max-frames", "3"]);
    let (st, _, err) = d.wait(60);
    assert!(st.success(), "{err}");
    let after = lines_in(&log);
    assert_eq!(after.len(), lines.len() + 3);
    assert!(after[lines.len()].frame > last);
}

/// Regression: frame ids restarted at 0 when the last whole line of the log
/// was JSON but not a decision, and `verify` stopped at that line.
#[test]
fn a_foreign_line_in_the_log_neither_resets_frame_ids_nor_stops_verify() {
    let s = setup(6, &synthetic(0), "");
    let run = |n: &str| {
        let d = Daemon::start(s.root(), &["--config", p(&s.cfg), "--max-frames", n]);
        let (st, _, err) = d.wait(60);
        assert!(st.success(), "{err}");
    };
    run("4");
    let active = log_dir(s.root()).join("decisions.jsonl");
    let mut text = std::fs::read_to_string(&active).unwrap();
    text += "{\"note\":\"lens cleaned\",\"by\":\"shift B\"}\n";
    std::fs::write(&active, text).unwrap();
    run("3");
    let text = std::fs::read_to_string(&active).unwrap();
    let frames: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("frame").and_then(|f| f.as_u64()))
        .collect();
    assert_eq!(frames, vec![0, 1, 2, 3, 4, 5, 6]);
    assert!(text.contains("lens cleaned"));
    let out = ok(&["verify", p(&log_dir(s.root()))]);
    assert!(
        out.contains("FOREIGN") && out.contains("decisions.jsonl:5"),
        "{out}"
    );
    assert!(
        out.contains("7 decisions") && out.contains("1 other lines skipped"),
        "{out}"
    );
}

/// Regression: `check-config` said OK for output folders that `run` could
/// not create or write.
#[test]
fn check_config_proves_the_output_folders_writable() {
    let s = setup(2, &synthetic(0), "");
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    // A folder under a regular file: a config error naming the key.
    let file = s.root().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let bad = s.root().join("bad.yaml");
    let log = log_dir(s.root()).display().to_string();
    std::fs::write(
        &bad,
        text.replace(&log, &file.join("log").display().to_string()),
    )
    .unwrap();
    let e = fails(&["check-config", p(&bad)], gcm_inspect::error::exit::CONFIG);
    assert!(
        e.contains("output.log_dir (line") && e.contains("a-file"),
        "{e}"
    );
    let e = fails(
        &["run", "--config", p(&bad), "--max-frames", "1"],
        gcm_inspect::error::exit::CONFIG,
    );
    assert!(e.contains("output.log_dir"), "{e}");
    // A folder on a full disk: not writable, said so.
    if let Some(disk) = SmallDisk::mount(64) {
        let ev = disk.path("evidence");
        std::fs::create_dir(&ev).unwrap();
        disk.fill();
        let full = s.root().join("full.yaml");
        let evidence = evidence_dir(s.root()).display().to_string();
        std::fs::write(&full, text.replace(&evidence, &ev.display().to_string())).unwrap();
        let e = fails(&["check-config", p(&full)], gcm_inspect::error::exit::IO);
        assert!(
            e.contains("output.evidence_dir is not writable") && e.contains("No space left"),
            "{e}"
        );
    }
    let out = ok(&["check-config", p(&s.cfg)]);
    assert!(out.contains("(writable)"), "{out}");
}

/// The README's exit-code table, code by code: every documented code has a
/// case here, every case's code is documented, and each case names its
/// cause on stderr.
#[test]
fn every_documented_exit_code_is_what_its_cases_give() {
    use gcm_inspect::error::exit;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("## Exit codes")
        .nth(1)
        .expect("README has an exit code table");
    let documented: Vec<i32> = table
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim().parse().unwrap())
        .collect();
    assert!(documented.len() >= 8, "{documented:?}");
    // The unit restarts on exactly the codes the table says it does.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/gcm-inspect.service"
    ))
    .unwrap();
    let prevent: Vec<i32> = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .expect("the unit lists RestartPreventExitStatus")
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    for row in table
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            break;
        }
        let code: i32 = cells[1].parse().unwrap();
        let restarted = cells[3] == "yes";
        if code != exit::OK && code != exit::DIVERGENT {
            // 0 is success; 1 comes from `verify` and `explain`, not the daemon.
            assert_eq!(
                !prevent.contains(&code),
                restarted,
                "exit code {code}: the README says restarted = {restarted}, the unit lists {prevent:?}"
            );
        }
    }
    assert!(
        prevent.contains(&101),
        "a panic must not restart into a loop"
    );

    let s = setup(1, &synthetic(0), "");
    let root = s.root();
    let good = std::fs::read_to_string(&s.cfg).unwrap();
    let cfg = |name: &str, text: String| {
        let f = root.join(name);
        std::fs::write(&f, text).unwrap();
        f.display().to_string()
    };
    let img = root.join("cell.png");
    image::GrayImage::from_pixel(16, 16, image::Luma([90]))
        .save(&img)
        .unwrap();
    let img = img.display().to_string();
    let model = s.model.display().to_string();
    let no_card = root.join("no-card");
    std::fs::create_dir(&no_card).unwrap();
    std::fs::copy(
        s.model.join("model.safetensors"),
        no_card.join("model.safetensors"),
    )
    .unwrap();
    let no_card = no_card.display().to_string();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = cfg(
        "busy.yaml",
        good.replace("127.0.0.1:0", &busy.local_addr().unwrap().to_string()),
    );
    let tiny_fps = cfg("fps.yaml", good.replace("fps: 0", "fps: 1e-300"));
    let device = cfg("device.yaml", format!("{good}device: tpu\n"));
    let unknown = cfg("unknown.yaml", format!("{good}colour: red\n"));
    let train_cfg = cfg("train.yaml", "model:\n  encoder_widths: []\n".into());
    let data = root.join("data");
    synth(&data, 4, 16, "ok,crack", 1);
    let data = data.display().to_string();
    let camera = cfg(
        "camera.yaml",
        format!("model: {model}\nsource:\n  v4l2:\n    device_path: /dev/video-gcm-missing\n    width_px: 64\n    height_px: 64\n    fps: 30\n    pixel_format: GREY\nmetrics:\n  enabled: false\n"),
    );
    // Divergent evidence: a kept evidence folder whose recorded score was changed.
    let ev_cfg = cfg(
        "evidence.yaml",
        format!("{good}evidence:\n  all_frames: true\n"),
    );
    ok(&["run", "--config", &ev_cfg, "--max-frames", "2"]);
    let ev = evidence_dir(root).join("f000000000001/evidence.json");
    let mut rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ev).unwrap()).unwrap();
    rec["ccm"][0]["score"] = (rec["ccm"][0]["score"].as_f64().unwrap() + 0.5).into();
    std::fs::write(&ev, rec.to_string()).unwrap();
    let log = log_dir(root).display().to_string();
    let missing = root.join("missing.png").display().to_string();
    let corrupt = root.join("corrupt.png");
    std::fs::write(&corrupt, b"not a png").unwrap();
    let corrupt = corrupt.display().to_string();
    // sysfs refuses mkdir even to root: an I/O error, not a config one.
    let ro_text = good.replace(
        &evidence_dir(root).display().to_string(),
        "/sys/gcm-inspect-evidence",
    );
    assert_ne!(ro_text, good);
    let read_only = cfg("read-only.yaml", ro_text);
    let good_cfg = s.cfg.display().to_string();

    let cases: Vec<(i32, Vec<&str>, &str)> = vec![
        (exit::OK, vec!["check-config", &good_cfg], ""),
        (
            exit::DEVICE,
            vec!["run", "--config", &busy_port],
            "metrics.listen",
        ),
        (
            exit::USAGE,
            vec![
                "eval",
                "--model",
                &model,
                "--data",
                &data,
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            exit::USAGE,
            vec!["explain", "--model", &model, &img, "--device", "tpu"],
            "tpu",
        ),
        (
            exit::USAGE,
            vec!["run", "--max-frames", "0"],
            "--max-frames",
        ),
        (exit::CONFIG, vec!["check-config", &unknown], "colour"),
        (
            exit::CONFIG,
            vec!["check-config", &tiny_fps],
            "source.synthetic.fps",
        ),
        (
            exit::CONFIG,
            vec!["run", "--config", &tiny_fps],
            "source.synthetic.fps",
        ),
        (exit::CONFIG, vec!["check-config", &device], "device"),
        (
            exit::CONFIG,
            vec![
                "train",
                "--data",
                &data,
                "--out",
                "/nonexistent/o",
                "--config",
                &train_cfg,
            ],
            "model.encoder_widths",
        ),
        (
            exit::NO_INPUT,
            vec!["explain", "--model", &model, &missing],
            "missing.png",
        ),
        (
            exit::MODEL,
            vec!["explain", "--model", &no_card, &img],
            "model.json",
        ),
        (
            exit::DEVICE,
            vec!["check-config", &camera],
            "/dev/video-gcm-missing",
        ),
        (
            exit::DATA,
            vec!["explain", "--model", &model, &corrupt],
            "corrupt.png",
        ),
        (
            exit::IO,
            vec!["check-config", &read_only],
            "/sys/gcm-inspect-evidence",
        ),
        (exit::DIVERGENT, vec!["verify", &log], "do not reproduce"),
    ];
    #[cfg(not(feature = "cuda"))]
    let cases = {
        let mut c = cases;
        c.push((
            exit::DEVICE,
            vec!["explain", "--model", &model, &img, "--device", "cuda"],
            "CUDA",
        ));
        c
    };
    for (code, args, needle) in &cases {
        assert!(
            documented.contains(code),
            "exit code {code} of {args:?} is not in the README's table"
        );
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(*code), "{args:?}:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}:\n{err}");
        assert!(
            err.contains(needle),
            "{args:?} does not name {needle:?}:\n{err}"
        );
    }
    for code in &documented {
        if *code == exit::SOFTWARE {
            // An internal failure has no input that provokes it by design;
            // its mapping is a unit test (error::tests).
            continue;
        }
        assert!(
            cases.iter().any(|(c, _, _)| c == code),
            "documented exit code {code} has no case"
        );
    }
    drop(busy);
}

/// Retention on a real small disk that is nearly full: the decision log
/// stays within `output.log.keep_bytes` by deleting its oldest rotated
/// files (never the active file, never `labels.jsonl`), so its writes never
/// fail; the daemon warns that the disk is low; what is left is the newest
/// decisions without a gap, and `verify` reads it.
#[test]
fn the_log_on_a_nearly_full_disk_stays_within_keep_bytes() {
    let Some(disk) = SmallDisk::mount(8192) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 4);
    let log = disk.path("log");
    std::fs::create_dir(&log).unwrap();
    let labels = "{\"frame\":1,\"label\":\"crack\"}\n";
    std::fs::write(log.join("labels.jsonl"), labels).unwrap();
    let keep: u64 = 256 << 10;
    // Leave the log its bound and a little more: below 5% free from the start.
    let filler = disk.path("filler");
    std::fs::write(
        &filler,
        vec![0u8; (8192 << 10) - (keep as usize + (96 << 10))],
    )
    .unwrap();
    let cfg = config_at(
        root,
        &model,
        &synthetic(0),
        &log,
        &root.join("evidence"),
        "",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "    fsync_every_lines: 1\n",
        &format!("    fsync_every_lines: 1\n    rotate_bytes: 32768\n    keep_bytes: {keep}\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    let frames = 3000;
    let d = Daemon::start(
        root,
        &["--config", p(&cfg), "--max-frames", &frames.to_string()],
    );
    let (st, out, err) = d.wait(300);
    assert!(st.success(), "{err}");
    assert!(err.contains("almost full"), "no low-space warning: {err}");
    let s = summary(&out);
    assert_eq!(s["decisions"].as_u64(), Some(frames), "{s}");
    assert_eq!(s["decisions_unlogged"].as_u64(), Some(0), "{s}");

    let files = gcm_inspect::pipeline::sink::log::log_files(&log).unwrap();
    assert!(files.last().unwrap().ends_with("decisions.jsonl"));
    let size: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(size <= keep, "the log takes {size} bytes, bound {keep}");
    let lines = lines_in(&log);
    let first = lines[0].frame;
    assert!(first > 0, "nothing was deleted");
    let ids: Vec<u64> = lines.iter().map(|l| l.frame).collect();
    assert_eq!(ids, (first..first + lines.len() as u64).collect::<Vec<_>>());
    assert_eq!(ids.last().copied(), Some(frames - 1));
    assert_eq!(
        std::fs::read_to_string(log.join("labels.jsonl")).unwrap(),
        labels
    );
    eprintln!(
        "retention: {frames} decisions into a {} KiB bound on an 8 MiB tmpfs with {} KiB free: {} files / {size} bytes kept, frames {first}..={}",
        keep >> 10,
        (keep >> 10) + 96,
        files.len(),
        frames - 1
    );
    let v = run(&["verify", p(&log)]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

/// The configs of two instances on one box: each valid alone, refused
/// together when they share a log folder or a metrics port, accepted apart.
#[test]
fn check_config_refuses_two_instances_sharing_a_log_folder_or_port() {
    let s = setup(5, &synthetic(0), "");
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    let root = s.root();
    let write = |name: &str, t: String| {
        let f = root.join(name);
        std::fs::write(&f, t).unwrap();
        f
    };
    let log = log_dir(root).display().to_string();
    let ev = evidence_dir(root).display().to_string();
    let listen = "127.0.0.1:0";
    assert!(text.contains(listen));
    let own = |n: &str, port: u16| {
        text.replace(&log, &root.join(format!("{n}/log")).display().to_string())
            .replace(&ev, &root.join(format!("{n}/ev")).display().to_string())
            .replace(listen, &format!("127.0.0.1:{port}"))
    };
    let a = write("a.yaml", own("a", 19464));
    let b = write("b.yaml", own("b", 19465));
    let out = ok(&["check-config", p(&a), p(&b)]);
    assert!(
        out.contains("a.yaml: OK") && out.contains("b.yaml: OK"),
        "{out}"
    );

    let same_log = write(
        "same-log.yaml",
        own("c", 19466).replace(
            &root.join("c/log").display().to_string(),
            &root.join("a/log").display().to_string(),
        ),
    );
    let e = fails(
        &["check-config", p(&a), p(&same_log)],
        gcm_inspect::error::exit::CONFIG,
    );
    assert!(
        e.contains("output.log_dir") && e.contains("a.yaml") && e.contains("same-log.yaml"),
        "{e}"
    );

    let same_port = write("same-port.yaml", own("d", 19464));
    let e = fails(
        &["check-config", p(&b), p(&a), p(&same_port)],
        gcm_inspect::error::exit::CONFIG,
    );
    assert!(
        e.contains("metrics.listen port 19464") && e.contains("a.yaml"),
        "{e}"
    );
}
