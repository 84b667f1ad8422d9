//! The GStreamer source against real components on 127.0.0.1: an RTSP
//! server (gst-rtsp-server, in a child process: this test binary re-run as
//! [`rtsp_server`]) streaming synthetic cell images encoded as MJPEG or
//! H.264, and `videotestsrc` pipelines for the path without a network.
//!
//! **Tolerance against `explain`.** The daemon decides the frames as the
//! camera delivered them, after an 8-bit YUV 4:2:0 conversion and a lossy
//! codec; `explain` decides the original PNGs. Each decided frame (kept in
//! full as the evidence's `frame.png`) is matched to its original by the
//! least mean absolute difference, which must be below [`max_mae`] levels
//! (the codec's loss at quality 95 / zero-latency H.264 on these
//! images, plus the limited-range round trip) while every other original is
//! at least [`MIN_OTHER_MAE`] away (so the match is unambiguous). The
//! scores may then differ by at most [`SCORE_TOL`]; the decisions must agree
//! wherever `explain`'s margin exceeds twice that (below it, a change within
//! the tolerance may flip the class, so agreement there is not required).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use gcm_inspect::data::image_io::save_grey;
use gcm_inspect::data::synth::{self, Kind};

use crate::daemon_util::*;
use crate::util::{fails, ok, p};

/// Mean absolute difference to the original allowed: measured at most 7.5
/// levels for JPEG at quality 95 and for H.264 (x264 ultrafast, zero
/// latency) alike, and about the same per cell for both, so most of it is
/// the chain (grey to limited-range I420 and back, 4:2:0) rather than the
/// codec; the nearest other cell is at least 14 levels away.
fn max_mae(codec: &str) -> f64 {
    let _ = codec;
    8.0
}
/// Every other original at least this far (the match is unambiguous).
const MIN_OTHER_MAE: f64 = 8.0;
/// Scores of the frame and of its original within this (measured: 0.0005
/// at most with the tiny test model, whose margins are 0.005 to 0.008).
const SCORE_TOL: f32 = 0.002;
/// Side of the streamed images (H.264 needs a multiple of 16 for no padding).
const SIDE: usize = 48;

/// `n` synthetic cells as `cell_NNN.png` (cracked and good in turn).
fn cells(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let (_, px) = synth::sample(17, i, SIDE, &[Kind::Crack, Kind::Ok, Kind::Spot]);
        save_grey(&dir.join(format!("cell_{i:03}.png")), SIDE, SIDE, px).unwrap();
    }
}

/// The server's settings, passed to the child through the environment:
/// `dir;count;port;fps;codec;credentials`.
const SERVE_ENV: &str = "GCM_TEST_RTSP_SERVE";

/// Not a test: the RTSP server the camera tests (and scripts/bench-rtsp.sh)
/// run as a child process (`--ignored --exact camera::rtsp_server` with
/// [`SERVE_ENV`] set). It serves `rtsp://127.0.0.1:PORT/cells`: the folder's
/// `cell_NNN.png` in a loop at `fps`, encoded as `jpeg` (quality 95) or
/// `h264` (x264, zero latency, a key frame every 10 frames), optionally
/// behind basic authentication (`user:password`); prints `rtsp-ready PORT`
/// and serves until killed. Without the variable it does nothing.
#[test]
#[ignore]
fn rtsp_server() {
    use gstreamer_rtsp_server as rtsp;
    use gstreamer_rtsp_server::prelude::*;
    let Ok(spec) = std::env::var(SERVE_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split(';').collect();
    let (dir, count, port, fps, codec, creds) = (f[0], f[1], f[2], f[3], f[4], f[5]);
    let count: usize = count.parse().unwrap();
    gstreamer::init().unwrap();
    let main_loop = gstreamer::glib::MainLoop::new(None, false);
    let server = rtsp::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(port);
    let encode = match codec {
        "jpeg" => "jpegenc quality=95 ! rtpjpegpay name=pay0 pt=26",
        "h264" => "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 config-interval=1",
        other => panic!("codec {other}"),
    };
    let factory = rtsp::RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( multifilesrc location={dir}/cell_%03d.png index=0 stop-index={} loop=true caps=image/png,framerate={fps}/1 ! pngdec ! videoconvert ! video/x-raw,format=I420 ! {encode} )",
        count - 1
    ));
    factory.set_shared(true);
    if let Some((user, password)) = creds.split_once(':') {
        let auth = rtsp::RTSPAuth::new();
        let token = rtsp::RTSPToken::builder()
            .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
            .build();
        auth.add_basic(&rtsp::RTSPAuth::make_basic(user, password), &token);
        server.set_auth(Some(&auth));
        factory.add_role_from_structure(
            &gstreamer::Structure::builder("user")
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build(),
        );
    }
    server
        .mount_points()
        .unwrap()
        .add_factory("/cells", factory);
    let _id = server.attach(None).unwrap();
    println!("rtsp-ready {}", server.bound_port());
    main_loop.run();
}

/// A running RTSP server child.
struct Server {
    child: Child,
    _out: BufReader<ChildStdout>,
    port: u16,
}

impl Server {
    /// Starts the server on `port` (0: any free one) and waits until it listens.
    fn start(dir: &Path, count: usize, port: u16, fps: u32, codec: &str, creds: &str) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "camera::rtsp_server", "--nocapture"])
            .env(
                SERVE_ENV,
                format!("{};{count};{port};{fps};{codec};{creds}", dir.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the RTSP server ended before listening"
            );
            if let Some(p) = line.trim().strip_prefix("rtsp-ready ") {
                break p.parse().unwrap();
            }
        };
        Server {
            child,
            _out: out,
            port,
        }
    }

    fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cells", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rtsp_source(url: &str, extra: &str) -> String {
    format!(
        "  gstreamer:\n    rtsp:\n      url: {url}\n      latency_ms: 100\n{extra}    frame_timeout_ms: 3000\n    reconnect_initial_backoff_ms: 100\n    reconnect_max_backoff_ms: 800\n"
    )
}

fn mae(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Runs the daemon on the stream for `frames` frames and holds every
/// decision to `explain` on the original image (see the module docs).
fn decisions_match_explain(codec: &str) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 3);
    let frames = root.join("frames");
    let n = 6;
    cells(&frames, n);
    let server = Server::start(&frames, n, 0, 10, codec, "");
    let cfg = config(
        root,
        &model,
        &rtsp_source(&server.url(), ""),
        "evidence:\n  all_frames: true\n",
    );
    let want = 20;
    let d = Daemon::start(
        root,
        &["--config", p(&cfg), "--max-frames", &want.to_string()],
    );
    let (st, out, err) = d.wait(120);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    // At 10 fps the model keeps up: every frame received is decided.
    assert_eq!(
        (
            s["frames_captured"].as_u64(),
            s["decisions"].as_u64(),
            s["frames_dropped"].as_u64()
        ),
        (Some(want), Some(want), Some(0)),
        "{s}"
    );

    let originals: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            image::open(frames.join(format!("cell_{i:03}.png")))
                .unwrap()
                .to_luma8()
                .into_raw()
        })
        .collect();
    let files: Vec<String> = (0..n)
        .map(|i| p(&frames.join(format!("cell_{i:03}.png"))).to_string())
        .collect();
    let mut args = vec!["explain", "--model", p(&model), "--resize", "--json"];
    args.extend(files.iter().map(String::as_str));
    let explained: Vec<serde_json::Value> = serde_json::from_str(&ok(&args)).unwrap();

    let lines = log_lines(root);
    assert_eq!(lines.len(), want as usize);
    let mut seen = std::collections::BTreeSet::new();
    let (mut compared, mut worst_mae, mut worst_score) = (0, 0f64, 0f32);
    for l in &lines {
        // The frame's capture time is its buffer's (its arrival, before
        // depayloading and decoding): never after the hand-over.
        let lat = &l.latency;
        assert!(
            lat.capture_to_decision_ms + 0.05 >= lat.queue_ms + lat.preprocess_ms + lat.infer_ms,
            "frame {}: {lat:?}",
            l.frame
        );
        let dir = l.evidence.as_ref().expect("all_frames keeps evidence");
        let frame = image::open(dir.join("frame.png")).unwrap().to_luma8();
        assert_eq!(frame.dimensions(), (SIDE as u32, SIDE as u32));
        let mut d: Vec<(f64, usize)> = originals
            .iter()
            .enumerate()
            .map(|(i, o)| (mae(frame.as_raw(), o), i))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (best, i) = d[0];
        assert!(
            best <= max_mae(codec),
            "frame {}: {best:.2} levels from cell {i}",
            l.frame
        );
        assert!(
            d[1].0 >= MIN_OTHER_MAE,
            "frame {}: cells {i} and {} both near ({best:.2}, {:.2})",
            l.frame,
            d[1].1,
            d[1].0
        );
        worst_mae = worst_mae.max(best);
        seen.insert(i);
        let e = &explained[i];
        let scores: Vec<f32> = serde_json::from_value(e["scores"].clone()).unwrap();
        for (a, b) in l.scores.iter().zip(&scores) {
            worst_score = worst_score.max((a - b).abs());
            assert!(
                (a - b).abs() <= SCORE_TOL,
                "frame {} (cell {i}): score {a} vs {b}",
                l.frame
            );
        }
        let margin = e["margin"].as_f64().unwrap() as f32;
        if margin > 2.0 * SCORE_TOL {
            compared += 1;
            assert_eq!(
                l.class,
                e["decision"].as_str().unwrap(),
                "frame {} (cell {i})",
                l.frame
            );
        }
    }
    eprintln!(
        "{codec}: {want} frames, {} distinct cells, worst MAE {worst_mae:.2} levels, worst score difference {worst_score:.4}, {compared} decisions compared",
        seen.len()
    );
    assert!(seen.len() >= n / 2, "only cells {seen:?} were seen");
    assert!(
        compared > 0,
        "no decision with a margin above {}",
        2.0 * SCORE_TOL
    );
}

#[test]
fn rtsp_mjpeg_frames_are_decided_like_explain_within_the_codec_loss() {
    decisions_match_explain("jpeg");
}

#[test]
fn rtsp_h264_frames_are_decided_like_explain_within_the_codec_loss() {
    decisions_match_explain("h264");
}

#[test]
fn rtsp_server_stopped_and_restarted_the_daemon_counts_the_loss_and_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 4);
    let frames = root.join("frames");
    cells(&frames, 4);
    let mut server = Server::start(&frames, 4, 0, 10, "h264", "");
    let port = server.port;
    let cfg = config(root, &model, &rtsp_source(&server.url(), ""), "");
    let mut d = Daemon::start(root, &["--config", p(&cfg)]);
    let addr = d.metrics_addr();
    let get = |name: &str| metric(&http_get(&addr, "/metrics"), name);
    wait_for(60, "decisions before the stop", || count_lines(root) >= 5);
    assert_eq!(get("gcm_source_errors_total"), 0.0);

    server.stop();
    wait_for(30, "the loss to be counted", || {
        get("gcm_source_errors_total") >= 1.0
    });
    // Attempts against a closed port fail and are counted too.
    std::thread::sleep(Duration::from_millis(1500));
    let before = count_lines(root);
    let errors_down = get("gcm_source_errors_total");
    assert!(
        errors_down >= 2.0,
        "{errors_down} errors while the server is down"
    );
    assert_eq!(get("gcm_source_reconnects_total"), 0.0);

    let _server = Server::start(&frames, 4, port, 10, "h264", "");
    let back = Instant::now();
    wait_for(60, "the reconnection", || {
        get("gcm_source_reconnects_total") >= 1.0
    });
    wait_for(60, "decisions after the restart", || {
        count_lines(root) >= before + 5
    });
    let errors = get("gcm_source_errors_total");
    d.signal("TERM");
    let (st, out, err) = d.wait(60);
    assert_eq!(st.code(), Some(0), "{err}");
    let s = summary(&out);
    assert_eq!(s["source_reconnects"].as_u64(), Some(1), "{s}");
    assert!(
        err.contains("camera lost") && err.contains("camera back"),
        "{err}"
    );
    eprintln!(
        "reconnect: {errors} errors counted, 1 reconnect, back {:.1} s after the restart, {} decisions before the stop, {} in all",
        back.elapsed().as_secs_f64(),
        before,
        s["decisions"]
    );
}

#[test]
fn rtsp_credentials_come_from_their_file_and_are_never_shown() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 5);
    let frames = root.join("frames");
    cells(&frames, 2);
    let secret = "s3cr3t-Pa55";
    let server = Server::start(&frames, 2, 0, 10, "jpeg", &format!("line7:{secret}"));
    std::fs::write(root.join("camera.cred"), format!("line7:{secret}\n")).unwrap();
    let src = rtsp_source(&server.url(), "      credentials_file: camera.cred\n");
    let cfg = config(root, &model, &src, "");
    let out = ok(&["check-config", p(&cfg)]);
    assert!(
        out.contains("rtspsrc name=camera location=") && !out.contains(secret),
        "{out}"
    );
    let d = Daemon::start_with(root, &["--config", p(&cfg), "--max-frames", "5"], |c, _| {
        c.env("RUST_LOG", "debug");
    });
    let (st, _, err) = d.wait(60);
    assert!(st.success(), "{err}");
    assert!(!err.contains(secret), "the password is in the log:\n{err}");

    // A wrong password: the camera refuses, the daemon does not start.
    std::fs::write(root.join("camera.cred"), "line7:wrong\n").unwrap();
    let err = fails(&["check-config", p(&cfg)], 69);
    assert!(
        err.contains(&server.url()) && !err.contains("wrong"),
        "{err}"
    );
}

/// A `videotestsrc` pipeline (no network): `n` frames in `format`.
fn videotest(format: &str, extra: &str) -> String {
    format!(
        "  gstreamer:\n    pipeline: videotestsrc is-live=true pattern=ball {extra}! video/x-raw,format={format},width=40,height=30,framerate=30/1\n"
    )
}

#[test]
fn videotestsrc_frames_in_each_format_are_decided_from_their_evidence_frame() {
    for format in ["GRAY8", "YUY2", "RGB", "NV12"] {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let model = root.join("model");
        tiny_model(&model, 6);
        let cfg = config(
            root,
            &model,
            &videotest(format, ""),
            "evidence:\n  all_frames: true\n",
        );
        let d = Daemon::start(root, &["--config", p(&cfg), "--max-frames", "6"]);
        let (st, out, err) = d.wait(60);
        assert!(st.success(), "{format}: {err}");
        assert_eq!(summary(&out)["decisions"].as_u64(), Some(6), "{format}");
        let want = match format {
            "GRAY8" => "GREY",
            "YUY2" => "YUYV",
            "RGB" => "RGB3",
            f => f,
        };
        assert!(err.contains(&format!("40x30 {want}")), "{format}: {err}");
        // The frame as captured (converted to grey by the contract), decided
        // again offline, gives the daemon's scores.
        for l in log_lines(root) {
            let frame = l.evidence.as_ref().unwrap().join("frame.png");
            let e: Vec<serde_json::Value> = serde_json::from_str(&ok(&[
                "explain",
                "--model",
                p(&model),
                "--resize",
                "--json",
                p(&frame),
            ]))
            .unwrap();
            let scores: Vec<f32> = serde_json::from_value(e[0]["scores"].clone()).unwrap();
            for (a, b) in l.scores.iter().zip(&scores) {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{format} frame {}: {a} vs {b}",
                    l.frame
                );
            }
        }
    }
}

#[test]
fn a_pipeline_that_ends_is_restarted_and_counted() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 7);
    // Every pipeline ends after 4 frames (end of stream): 10 frames need at
    // least two restarts.
    let src = format!(
        "{}    reconnect_initial_backoff_ms: 50\n",
        videotest("GRAY8", "num-buffers=4 ")
    );
    let cfg = config(root, &model, &src, "");
    let d = Daemon::start(root, &["--config", p(&cfg), "--max-frames", "10"]);
    let (st, out, err) = d.wait(60);
    assert!(st.success(), "{err}");
    let s = summary(&out);
    assert_eq!(s["decisions"].as_u64(), Some(10), "{s}");
    assert!(s["source_reconnects"].as_u64().unwrap() >= 2, "{s}");
    assert!(err.contains("end of stream"), "{err}");
}

#[test]
fn a_missing_element_is_named_after_the_pipeline_is_shown() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let model = root.join("model");
    tiny_model(&model, 8);
    let src = "  gstreamer:\n    csi:\n      sensor_id: 0\n      width_px: 1280\n      height_px: 720\n      fps: 30\n";
    let cfg = config(root, &model, src, "");
    let out = crate::util::run(&["check-config", p(&cfg)]);
    assert_eq!(out.status.code(), Some(69));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("pipeline: nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv"),
        "{stdout}"
    );
    assert!(
        stderr.contains("no element \"nvarguscamerasrc\""),
        "{stderr}"
    );
    let d = Daemon::start(root, &["--config", p(&cfg)]);
    let (st, _, err) = d.wait(60);
    assert_eq!(st.code(), Some(69), "{err}");
    assert!(err.contains("nvarguscamerasrc"), "{err}");
}

/// `scripts/bench-rtsp.sh` on a short run: the table has its figures, and
/// the capture-to-decision latency (from the buffer timestamps) is never
/// below the daemon's own part of it.
#[test]
fn bench_rtsp_reports_the_latency_from_the_buffer_timestamps() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("scripts/bench-rtsp.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_gcm-inspect"))
        .env("TEST_BIN", std::env::current_exe().unwrap())
        .env("FPS", "10")
        .env("DURATION_S", "2")
        .env("IMAGES", "4")
        .env("LATENCY_MS", "100")
        .output()
        .expect("bash runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains("| builtin:demo | jpeg | 100 | 10 |"))
        .unwrap_or_else(|| panic!("no row in:\n{out}"))
        .split('|')
        .map(str::trim)
        .collect();
    // | date | model | codec | jitter | fps | frames | decisions/s | dropped | c2d p50 / p99 | daemon p50 / p99 |
    assert_eq!(row[6], "20", "{out}");
    assert_eq!(row[8], "0", "{out}");
    let pair = |s: &str| -> (f64, f64) {
        let (a, b) = s.split_once(" / ").unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (c50, c99) = pair(row[9]);
    let (d50, d99) = pair(row[10]);
    assert!(c99 >= c50 && d99 >= d50 && d50 > 0.0, "{out}");
    assert!(c50 >= d50 && c99 >= d99, "{out}");
}
