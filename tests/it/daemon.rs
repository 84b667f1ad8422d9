//! `gcm-inspect run`, `check-config` and `verify`: the daemon as a subprocess.

use std::path::Path;

use candle_core::Device;
use gcm_inspect::data::image_io::save_grey;
use gcm_inspect::data::synth::{self, Kind};

use crate::daemon_util::*;
use crate::util::{fails, ok, p};

/// `n` synthetic cells of `size` pixels as PNG files `cell_NNN.png` in `dir`.
fn replay_folder(dir: &Path, n: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let (_, px) = synth::sample(11, i, size, &[Kind::Crack, Kind::Ok]);
        save_grey(&dir.join(format!("cell_{i:03}.png")), size, size, px).unwrap();
    }
}

#[test]
fn replay_of_n_images_logs_n_decisions_identical_to_explain_json() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    let id = tiny_model(&model, 1);
    let frames = root.join("frames");
    // 24x24 files for a 16x16 model: the daemon resizes as the offline tools do.
    replay_folder(&frames, 9, 24);
    let src = format!("  replay:\n    dir: {}\n", frames.display());
    let cfg = config(root, &model, &src, "evidence:\n  all_frames: true\n");
    let d = Daemon::start(root, &["--config", p(&cfg)]);
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    assert_eq!(s["ended_by"], "source ended", "{s}");
    assert_eq!(
        (s["decisions"].as_u64(), s["frames_dropped"].as_u64()),
        (Some(9), Some(0))
    );

    let lines = log_lines(root);
    assert_eq!(lines.len(), 9);
    // The same files through `explain --json` (batched, resized the same way).
    let files: Vec<String> = (0..9)
        .map(|i| {
            frames
                .join(format!("cell_{i:03}.png"))
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["explain", "--model", p(&model), "--resize", "--json"];
    args.extend(files.iter().map(String::as_str));
    let explained: Vec<serde_json::Value> = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(explained.len(), 9);
    for (i, (l, e)) in lines.iter().zip(&explained).enumerate() {
        let name = format!("cell_{i:03}.png");
        assert_eq!(l.source.as_deref(), Some(name.as_str()), "sorted order");
        assert!(e["image"].as_str().unwrap().ends_with(&name), "{e}");
        assert_eq!(l.frame, i as u64);
        assert_eq!(l.model, id);
        assert_eq!(l.class, e["decision"].as_str().unwrap(), "{name}");
        let classes: Vec<String> = serde_json::from_value(e["classes"].clone()).unwrap();
        assert_eq!(l.classes, classes);
        let scores: Vec<f32> = serde_json::from_value(e["scores"].clone()).unwrap();
        assert_eq!(l.scores.len(), scores.len());
        for (a, b) in l.scores.iter().zip(&scores) {
            assert!((a - b).abs() <= 1e-5, "{name}: {a} vs {b}");
        }
        let ev = l
            .checks
            .evidence
            .as_ref()
            .expect("check (a) runs on every frame by default");
        assert!(ev.ok, "{name}: {ev:?}");
        // The evidence keeps the frame as captured, at full resolution.
        let dir = l.evidence.as_ref().expect("all_frames keeps evidence");
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("evidence.json")).unwrap())
                .unwrap();
        assert_eq!(rec["format"], "gcm-inspect-evidence/2");
        assert_eq!(rec["frame"], "frame.png");
        let kept = image::open(dir.join("frame.png")).unwrap().to_luma8();
        let captured = image::open(frames.join(&name)).unwrap().to_luma8();
        assert_eq!(kept, captured, "{name}: frame.png is the captured frame");
    }
}

#[test]
fn sigterm_stops_the_source_and_every_decision_made_is_logged() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 2);
    // Unpaced: the source waits for the model, so every captured frame must
    // come out as a logged decision.
    let cfg = config(
        root,
        &model,
        "  synthetic:\n    fps: 0\n    size_px: 16\n",
        "",
    );
    let d = Daemon::start(root, &["--config", p(&cfg)]);
    wait_for(60, "decisions in the log", || count_lines(root) >= 5);
    d.signal("TERM");
    let (st, out, err) = d.wait(60);
    assert_eq!(st.code(), Some(0), "{err}");
    let s = summary(&out);
    assert_eq!(s["ended_by"], "signal SIGTERM", "{s}");
    let lines = log_lines(root);
    let captured = s["frames_captured"].as_u64().unwrap();
    assert_eq!(s["frames_dropped"].as_u64(), Some(0));
    assert_eq!(s["decisions"].as_u64(), Some(captured), "{s}");
    assert_eq!(lines.len() as u64, captured, "{s}");
    assert_eq!(s["log_lines_synced"].as_u64(), Some(captured), "{s}");
    let ids: Vec<u64> = lines.iter().map(|l| l.frame).collect();
    assert_eq!(ids, (0..captured).collect::<Vec<_>>());
    assert!(err.contains("SIGTERM: stopping the source"), "{err}");
}

#[test]
fn kill_9_then_restart_cuts_the_torn_line_and_appends() {
    let s = setup(3, &synthetic(200), "");
    let (root, cfg) = (s.root(), s.cfg.as_path());
    let mut d = Daemon::start(root, &["--config", p(cfg)]);
    let addr = d.metrics_addr();
    wait_for(60, "decisions in the log", || count_lines(root) >= 5);
    let page = http_get(&addr, "/metrics");
    let reported = metric(&page, "gcm_log_lines_written_total") as usize;
    assert!(reported >= 5, "{page}");
    d.child.kill().unwrap(); // SIGKILL
    let _ = d.child.wait();
    drop(d);
    let before = log_lines(root);
    assert!(
        before.len() >= reported,
        "{} lines, {reported} reported written",
        before.len()
    );
    // What a power cut in the middle of a write leaves: half a line.
    let active = log_dir(root).join("decisions.jsonl");
    let mut bytes = std::fs::read(&active).unwrap();
    bytes.extend_from_slice(br#"{"frame":999999,"captured_unix_us":17"#);
    std::fs::write(&active, bytes).unwrap();

    let d = Daemon::start(root, &["--config", p(cfg), "--max-frames", "4"]);
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    assert!(err.contains("cut a torn tail"), "{err}");
    assert_eq!(summary(&out)["decisions"].as_u64(), Some(4));
    let after = log_lines(root);
    assert_eq!(after.len(), before.len() + 4);
    assert_eq!(after[..before.len()], before[..]);
    // Frame ids go on from the last logged one.
    let last = before.last().unwrap().frame;
    for (k, l) in after[before.len()..].iter().enumerate() {
        assert!(l.frame > last, "frame {} after {last}", l.frame);
        if k > 0 {
            assert!(l.frame > after[before.len() + k - 1].frame);
        }
    }
}

#[test]
fn bad_configs_exit_with_the_documented_code_naming_the_field_or_path() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 4);
    let synth = "  synthetic:\n    fps: 0\n    size_px: 16\n";
    let write = |name: &str, text: String| {
        let f = root.join(name);
        std::fs::write(&f, text).unwrap();
        f
    };
    let good = config(root, &model, synth, "");
    let good_text = std::fs::read_to_string(&good).unwrap();

    // Unknown key: exit 78 (config), key and line named.
    let f = write(
        "unknown.yaml",
        good_text.replace("    fps: 0\n", "    fps: 0\n    fsp: 3\n"),
    );
    for cmd in ["check-config", "run"] {
        let args: Vec<&str> = if cmd == "run" {
            vec!["run", "--config", p(&f)]
        } else {
            vec![cmd, p(&f)]
        };
        let e = fails(&args, gcm_inspect::error::exit::CONFIG);
        assert!(
            e.contains("unknown field `fsp`") && e.contains("line 5"),
            "{cmd}: {e}"
        );
    }
    // A wrong type, a reject class the model does not have, a probability
    // above 1: exit 78, the key (and what is wrong) named.
    let cases = [
        (
            "evidence:\n  quota_bytes: plenty\n",
            ["evidence.quota_bytes", "line"],
        ),
        (
            "decision:\n  reject_classes: [crack, scratch]\n",
            ["decision.reject_classes", "\"scratch\" is not a class"],
        ),
        (
            "decision:\n  min_probability: 1.5\n",
            ["decision.min_probability", "out of range"],
        ),
        (
            "outputs:\n  - mqtt: {url: 'mqtt://127.0.0.1:1883', qos: 2}\n",
            ["outputs[0].mqtt.qos (line", "must be 0 or 1"],
        ),
        (
            "outputs:\n  - webhook: {url: 'http://127.0.0.1/a'}\n  - webhook: {url: 'http://plc.example/b', ca_file: ca.pem}\n",
            ["outputs[1].webhook.ca_file (line", "needs an https:// URL"],
        ),
        (
            "outputs:\n  - mqtt: {url: 'mqtt://127.0.0.1:1883', topic: 'gcm/{line}/x'}\n",
            ["outputs[0].mqtt.topic", "placeholders are {station}"],
        ),
        (
            "outputs:\n  - mqtt: {url: 'mqtt://127.0.0.1:1883', ca_file: ca.pem}\n",
            ["outputs[0].mqtt.url", "certificate files need an mqtts:// URL"],
        ),
        (
            "outputs:\n  - verdicts: [ng]\n",
            ["outputs[0]", "needs exactly one of mqtt, webhook, modbus"],
        ),
        (
            "outputs:\n  - {name: gate, webhook: {url: 'http://127.0.0.1/a'}}\n  - {name: gate, modbus: {address: '127.0.0.1:502', coils: {ng: 1}}}\n",
            ["outputs[1].name", "\"gate\" is used twice"],
        ),
        (
            "outputs:\n  - verdicts: [bad]\n    mqtt: {url: 'mqtt://127.0.0.1:1883'}\n",
            ["outputs[0].verdicts[0]: unknown variant `bad`", "line 15"],
        ),
    ];
    for (i, (section, want)) in cases.iter().enumerate() {
        let f = write(&format!("bad_{i}.yaml"), format!("{good_text}{section}"));
        let e = fails(&["check-config", p(&f)], gcm_inspect::error::exit::CONFIG);
        assert!(want.iter().all(|w| e.contains(w)), "{section}: {e}");
    }
    // Missing model: exit 66 (no input), path named.
    let missing = root.join("no-such-model");
    let f = write(
        "model.yaml",
        good_text.replace(&model.display().to_string(), &missing.display().to_string()),
    );
    for args in [vec!["check-config", p(&f)], vec!["run", "--config", p(&f)]] {
        let e = fails(&args, gcm_inspect::error::exit::NO_INPUT);
        assert!(e.contains("no-such-model"), "{e}");
    }
    // The baseline CNN (no class weight maps, so no CCM to decide by or to
    // log): exit 65 (model), the model and the reason named.
    let cnn = root.join("cnn");
    {
        use gcm_inspect::model::{checkpoint, gcm, Cnn, ModelConfig};
        let mut cfg = ModelConfig::table6(16, 16, 1, vec!["ok".into(), "crack".into()]);
        cfg.encoder_widths = vec![2, 3, 4];
        cfg.stem_width = None;
        let (_, vm) = Cnn::init(&cfg, 1, &candle_core::Device::Cpu).unwrap();
        checkpoint::save(&cnn, &gcm::varmap_tensors(&vm), checkpoint::new_card(cfg)).unwrap();
    }
    let f = write(
        "cnn.yaml",
        good_text.replace(&model.display().to_string(), &cnn.display().to_string()),
    );
    for args in [vec!["check-config", p(&f)], vec!["run", "--config", p(&f)]] {
        let e = fails(&args, gcm_inspect::error::exit::MODEL);
        assert!(
            e.contains("cnn") && e.contains("no class weight maps") && e.contains(p(&cnn)),
            "{e}"
        );
    }
    // A compute device that cannot be had: exit 69 (device), named.
    #[cfg(not(feature = "cuda"))]
    {
        let f = write("device.yaml", format!("{good_text}device: cuda:0\n"));
        let e = fails(
            &["run", "--config", p(&f)],
            gcm_inspect::error::exit::DEVICE,
        );
        assert!(e.contains("cuda:0"), "{e}");
    }
    // A device name that is not one: exit 78 (config), key named (not 69,
    // which systemd retries).
    let f = write("device2.yaml", format!("{good_text}device: gpu\n"));
    let e = fails(&["check-config", p(&f)], gcm_inspect::error::exit::CONFIG);
    assert!(e.contains("device") && e.contains("\"gpu\""), "{e}");
    // A camera path that does not exist: exit 69, path named.
    let cam = model.display().to_string();
    let f = write(
        "camera.yaml",
        format!("model: {cam}\nsource:\n  v4l2:\n    device_path: /dev/video-gcm-missing\n    width_px: 64\n    height_px: 64\n    fps: 30\n    pixel_format: GREY\nmetrics:\n  enabled: false\n"),
    );
    for args in [vec!["check-config", p(&f)], vec!["run", "--config", p(&f)]] {
        let e = fails(&args, gcm_inspect::error::exit::DEVICE);
        assert!(e.contains("/dev/video-gcm-missing"), "{e}");
    }
    // A replay folder that does not exist: exit 66 (no input), key and path named.
    let f = write(
        "replay.yaml",
        good_text.replace(synth, "  replay:\n    dir: nowhere\n"),
    );
    let e = fails(&["check-config", p(&f)], gcm_inspect::error::exit::NO_INPUT);
    assert!(
        e.contains("source.replay.dir") && e.contains("nowhere"),
        "{e}"
    );
    // A bad value: exit 78 with key and line.
    let f = write("value.yaml", good_text.replace("fps: 0", "fps: -1"));
    let e = fails(&["check-config", p(&f)], gcm_inspect::error::exit::CONFIG);
    assert!(e.contains("source.synthetic.fps (line 4)"), "{e}");
    // And the good one passes.
    let out = ok(&["check-config", p(&good)]);
    assert!(out.contains("OK"), "{out}");
    // Without a decision section: the bare argmax, said in so many words.
    assert!(
        out.contains("verdict: no reject class (every confident decision is ok); no review band"),
        "{out}"
    );
}

#[test]
fn evidence_quota_is_honoured_and_verify_catches_a_corrupted_file() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 5);
    // About four evidence folders of a 16 x 16 model (8 files of a block each).
    let quota = 150_000u64;
    let cfg = config(
        root,
        &model,
        "  synthetic:\n    fps: 0\n    size_px: 16\n",
        &format!("evidence:\n  all_frames: true\n  quota_bytes: {quota}\nchecks:\n  reference_every_nth_frame: 3\n"),
    );
    let d = Daemon::start(root, &["--config", p(&cfg), "--max-frames", "30"]);
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    assert_eq!(s["evidence_written"].as_u64(), Some(30), "{s}");
    assert_eq!(s["divergences"].as_u64(), Some(0), "{s}");

    // The quota holds on the disk (allocated blocks, folders included, as
    // `du` counts them), the oldest went first, the log is untouched.
    use std::os::unix::fs::MetadataExt;
    let ev_dir = evidence_dir(root);
    let mut bytes = 0;
    let mut kept = Vec::new();
    for e in std::fs::read_dir(&ev_dir).unwrap() {
        let e = e.unwrap();
        kept.push(e.file_name().to_string_lossy().into_owned());
        bytes += e.metadata().unwrap().blocks() * 512;
        for f in std::fs::read_dir(e.path()).unwrap() {
            bytes += f.unwrap().metadata().unwrap().blocks() * 512;
        }
    }
    kept.sort();
    assert!(
        bytes <= quota,
        "{bytes} bytes of disk for evidence, quota {quota}"
    );
    assert!(kept.len() < 30 && !kept.is_empty(), "{kept:?}");
    assert_eq!(kept.last().unwrap(), "f000000000029");
    let lines = log_lines(root);
    assert_eq!(lines.len(), 30);
    for l in &lines {
        assert!(l.checks.evidence.as_ref().unwrap().ok, "{l:?}");
        assert!(l.evidence.is_some());
        assert_eq!(l.checks.reference.is_some(), l.frame % 3 == 0);
        if let Some(r) = &l.checks.reference {
            assert!(r.ok, "{r:?}");
        }
    }

    let log = log_dir(root);
    let out = ok(&["verify", p(&log)]);
    assert!(
        out.contains("30 decisions")
            && out.contains(&format!("{} reproduced, 0 divergent", kept.len())),
        "{out}"
    );

    // Paint one CCM file of the newest evidence white: its score must move.
    let victim = ev_dir.join("f000000000029");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(victim.join("evidence.json")).unwrap())
            .unwrap();
    let pos = rec["ccm"][0]["pos"].as_str().unwrap();
    image::DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
        16,
        16,
        image::Luma([65535u16]),
    ))
    .save(victim.join(pos))
    .unwrap();
    let e = fails(&["verify", p(&log)], gcm_inspect::error::exit::DIVERGENT);
    assert!(e.contains("do not reproduce"), "{e}");
    let o = crate::util::run(&["verify", p(&log)]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("DIVERGENT frame 29"), "{stdout}");
}

#[test]
fn sighup_with_corrupt_weights_keeps_serving_the_old_model() {
    let s = setup(6, &synthetic(100), "");
    let (root, model, cfg) = (s.root(), s.model.as_path(), s.cfg.as_path());
    let old_id = s.id.clone();
    let mut d = Daemon::start(root, &["--config", p(cfg)]);
    let addr = d.metrics_addr();
    wait_for(60, "decisions", || count_lines(root) >= 3);
    // Corrupt the weights in place, then ask for a reload.
    let w = model.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n / 2..].fill(0xFF);
    std::fs::write(&w, bytes).unwrap();
    d.signal("HUP");
    d.wait_stderr(
        60,
        "reload failed, still serving the previous config and model",
    );
    let seen = count_lines(root);
    wait_for(60, "decisions after the failed reload", || {
        count_lines(root) >= seen + 5
    });
    assert!(log_lines(root).iter().all(|l| l.model == old_id));
    let page = http_get(&addr, "/metrics");
    assert_eq!(
        metric(&page, "gcm_config_reloads_total{result=\"error\"}"),
        1.0
    );
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"));

    // A good model makes it through: new decisions carry the new id.
    let new_id = tiny_model(model, 7);
    d.signal("HUP");
    d.wait_stderr(60, "reload accepted");
    wait_for(60, "decisions by the new model", || {
        log_lines(root).iter().any(|l| l.model == new_id)
    });
    d.signal("INT");
    let (st, out, err) = d.wait(60);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(summary(&out)["ended_by"], "signal SIGINT");
    // Once switched, never back.
    let lines = log_lines(root);
    let first_new = lines.iter().position(|l| l.model == new_id).unwrap();
    assert!(lines[first_new..].iter().all(|l| l.model == new_id));
}

#[test]
fn metrics_and_healthz_while_running() {
    let s = setup(8, &synthetic(100), "");
    let (root, cfg) = (s.root(), s.cfg.as_path());
    let id = s.id.clone();
    let mut d = Daemon::start(root, &["--config", p(cfg)]);
    let addr = d.metrics_addr();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    wait_for(60, "decisions", || count_lines(root) >= 3);
    let page = http_get(&addr, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(metric(&page, "gcm_frames_captured_total") >= 3.0);
    assert!(
        page.contains(&format!("gcm_model_info{{model=\"{id}\"}} 1")),
        "{page}"
    );
    for class in crate::daemon_util::CLASSES {
        let series = format!("gcm_decisions_total{{class=\"{class}\"}}");
        assert!(page.contains(&series), "{series}: {page}");
    }
    for family in [
        "gcm_build_info{version=",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(page.contains(family), "{family}: {page}");
    }
    assert!(
        page.contains("gcm_verdicts_total{verdict=\"review\"}"),
        "{page}"
    );
    assert!(
        page.contains("gcm_capture_to_decision_seconds_bucket{le=\"+Inf\"}"),
        "{page}"
    );
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"));
    d.signal("TERM");
    let (st, _, err) = d.wait(60);
    assert!(st.success(), "{err}");
}

#[test]
fn under_systemd_it_notifies_and_logs_with_journal_priorities() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixDatagram;
    let s = setup(9, &synthetic(50), "");
    let (root, cfg) = (s.root(), s.cfg.as_path());
    let sock_path = root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let d = Daemon::start_with(root, &["--config", p(cfg)], |cmd, stderr| {
        let m = stderr.metadata().unwrap();
        cmd.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "200000")
            .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    });
    let mut buf = [0u8; 4096];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // READY comes first, then the inference loop's watchdog pings.
    let first = recv();
    assert!(first.starts_with("READY=1\nSTATUS=serving"), "{first:?}");
    let mut pings = 0;
    while pings < 3 {
        let m = recv();
        pings += (m == "WATCHDOG=1") as usize;
    }
    d.signal("TERM");
    loop {
        let m = recv();
        if m.starts_with("STOPPING=1") {
            break;
        }
    }
    let (st, _, err) = d.wait(60);
    assert!(st.success(), "{err}");
    // journald reads the priority from the line's start: <6> info, no timestamps.
    assert!(err.lines().any(|l| l.starts_with("<6>ready")), "{err}");
    assert!(err.lines().all(|l| l.starts_with('<')), "{err}");
}

/// Not a test: writes an untrained Table-3 model (64x64 grey, the synthetic
/// classes) to `$GCM_BENCH_MODEL_OUT`, for `scripts/bench-daemon.sh` where no
/// demo model is bundled. Same architecture and cost as a trained one.
/// The `image` crate's JPEG encoding of a synthetic 16x16 cell.
fn cell_jpeg(index: usize) -> Vec<u8> {
    let (_, px) = synth::sample(11, index, 16, &[Kind::Crack, Kind::Ok]);
    let img = image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(16, 16, px).unwrap());
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn replay_skips_cut_jpegs_as_corrupt_and_explain_refuses_them() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 5);
    let frames = root.join("frames");
    replay_folder(&frames, 2, 16);
    let j = cell_jpeg(2);
    let n = j.len();
    let at = j.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let scan = at + 2 + u16::from_be_bytes([j[at + 2], j[at + 3]]) as usize;
    let mid = scan + (n - 2 - scan) / 2;
    let zeros = [0u8; 600];
    std::fs::write(frames.join("cell_002.jpg"), &j).unwrap();
    std::fs::write(frames.join("cell_003.jpg"), [&j[..], &zeros[..]].concat()).unwrap();
    let cut = [
        ("cut_0_after_the_scan_header.jpg", j[..scan].to_vec()),
        ("cut_1_mid_scan.jpg", j[..mid].to_vec()),
        ("cut_2_before_the_end_marker.jpg", j[..n - 2].to_vec()),
        (
            "cut_3_mid_scan_end_marker_appended.jpg",
            [&j[..mid], &[0xFF, 0xD9][..]].concat(),
        ),
        (
            "cut_4_mid_scan_zero_padded.jpg",
            [&j[..mid], &zeros[..]].concat(),
        ),
    ];
    for (name, bytes) in &cut {
        std::fs::write(frames.join(name), bytes).unwrap();
    }
    let src = format!("  replay:\n    dir: {}\n", frames.display());
    let cfg = config(root, &model, &src, "");
    let d = Daemon::start(root, &["--config", p(&cfg)]);
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    assert_eq!(s["ended_by"], "source ended", "{s}");
    assert_eq!(
        (
            s["frames_captured"].as_u64(),
            s["decisions"].as_u64(),
            s["frames_skipped"].as_u64()
        ),
        (Some(9), Some(4), Some(5)),
        "{s}\n{err}"
    );
    let decided: Vec<String> = log_lines(root)
        .into_iter()
        .map(|l| l.source.unwrap_or_default())
        .collect();
    assert_eq!(
        decided,
        [
            "cell_000.png",
            "cell_001.png",
            "cell_002.jpg",
            "cell_003.jpg"
        ]
    );
    for (name, _) in &cut {
        assert!(
            err.lines()
                .any(|l| l.contains("frame skipped (corrupt)") && l.contains(name)),
            "no corrupt skip of {name}:\n{err}"
        );
        let file = frames.join(name);
        let e = fails(
            &["explain", "--model", p(&model), p(&file)],
            gcm_inspect::error::exit::DATA,
        );
        assert!(e.contains(name) && e.contains("cannot decode"), "{e}");
    }
    let whole = ok(&[
        "explain",
        "--model",
        p(&model),
        p(&frames.join("cell_003.jpg")),
        "--json",
    ]);
    assert!(whole.contains("\"decision\""), "{whole}");
}

#[test]
fn every_replay_format_is_decided_and_the_lossless_ones_score_as_the_png() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 6);
    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // One scene in every format the README lists for replay.
    let (_, px) = synth::sample(11, 0, 16, &[Kind::Crack, Kind::Ok]);
    let scene = image::GrayImage::from_raw(16, 16, px).unwrap();
    let names = [
        "scene.bmp",
        "scene.jpeg",
        "scene.jpg",
        "scene.png",
        "scene.tif",
        "scene.tiff",
    ];
    for name in names {
        scene
            .save(frames.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let lossless = |name: &str| !name.ends_with(".jpg") && !name.ends_with(".jpeg");

    let src = format!("  replay:\n    dir: {}\n", frames.display());
    let cfg = config(root, &model, &src, "");
    let d = Daemon::start(root, &["--config", p(&cfg)]);
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    assert_eq!(
        (s["decisions"].as_u64(), s["frames_skipped"].as_u64()),
        (Some(6), Some(0)),
        "{s}\n{err}"
    );
    let lines = log_lines(root);
    let sources: Vec<&str> = lines.iter().map(|l| l.source.as_deref().unwrap()).collect();
    assert_eq!(sources, names);
    let png = &lines[3];
    for l in &lines {
        let name = l.source.as_deref().unwrap();
        assert!(CLASSES.contains(&l.class.as_str()), "{name}: {}", l.class);
        assert!(l.scores.iter().all(|x| x.is_finite()), "{name}");
        if lossless(name) {
            assert_eq!(l.scores, png.scores, "{name}");
            assert_eq!(l.class, png.class, "{name}");
        }
    }

    let files: Vec<String> = names
        .iter()
        .map(|n| frames.join(n).display().to_string())
        .collect();
    let mut args = vec!["explain", "--model", p(&model), "--json"];
    args.extend(files.iter().map(String::as_str));
    let explained: Vec<serde_json::Value> = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(explained.len(), names.len());
    let png = &explained[3];
    for (name, e) in names.iter().zip(&explained) {
        assert!(e["image"].as_str().unwrap().ends_with(name), "{e}");
        assert!(e["decision"].is_string(), "{name}: {e}");
        if lossless(name) {
            assert_eq!(e["scores"], png["scores"], "{name}");
        }
    }
}

#[test]
#[ignore = "a tool for scripts/bench-daemon.sh, run with --ignored"]
fn write_untrained_table3_model() {
    let Some(out) = std::env::var_os("GCM_BENCH_MODEL_OUT") else {
        panic!("set GCM_BENCH_MODEL_OUT to the model directory to write");
    };
    let classes = ["crack", "inactive", "ok", "spot"]
        .map(String::from)
        .to_vec();
    let cfg = gcm_inspect::model::ModelConfig::table3(64, 64, 1, classes);
    let (_, vm) = gcm_inspect::model::Gcm::init(&cfg, 0, &Device::Cpu).unwrap();
    gcm_inspect::model::checkpoint::save(
        Path::new(&out),
        &gcm_inspect::model::gcm::varmap_tensors(&vm),
        gcm_inspect::model::checkpoint::new_card(cfg),
    )
    .unwrap();
}
