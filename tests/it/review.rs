//! `gcm-inspect review`: the review page over a log the real daemon wrote,
//! through raw HTTP (every endpoint, traversal, tokens, CSRF, oversized
//! requests) and in a real headless browser (Debian's chromium and
//! chromium-driver, driven over WebDriver).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gcm_inspect::data::image_io::save_grey;
use gcm_inspect::data::synth::{self, Kind};
use gcm_inspect::pipeline::sink::log::LogLine;
use serde_json::{json, Value};

use crate::daemon_util::*;
use crate::util::{fails, p};

/// A log and evidence written by the daemon: `n` replayed cells decided by
/// two tiny models in turn (two model ids), evidence for every frame with
/// heatmaps of every class.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub lines: Vec<LogLine>,
}

impl Fixture {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn log(&self) -> PathBuf {
        log_dir(self.root())
    }
}

pub fn fixture(n: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..n {
        let (_, px) = synth::sample(5, i, 24, &[Kind::Crack, Kind::Ok]);
        save_grey(&frames.join(format!("cell_{i:03}.png")), 24, 24, px).unwrap();
    }
    let src = format!("  replay:\n    dir: {}\n", frames.display());
    for seed in [1, 2] {
        let model = root.join(format!("model{seed}"));
        tiny_model(&model, seed);
        let cfg = config(
            root,
            &model,
            &src,
            "evidence:\n  all_frames: true\n  heatmaps_all_classes: true\n",
        );
        let (st, _, err) = Daemon::start(root, &["--config", p(&cfg)]).wait(120);
        assert!(st.success(), "{err}");
    }
    let lines = log_lines(root);
    assert_eq!(lines.len(), 2 * n);
    Fixture { dir, lines }
}

/// `gcm-inspect review` as a child process; killed when dropped.
pub struct Review {
    child: Child,
    pub addr: String,
    stderr: PathBuf,
}

impl Review {
    pub fn start(root: &Path, args: &[&str]) -> Review {
        let n = std::fs::read_dir(root).unwrap().count();
        let stderr = root.join(format!("review-stderr-{n}.txt"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_gcm-inspect"))
            .arg("review")
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        let at = first
            .find("http://")
            .unwrap_or_else(|| panic!("no address in {first:?}; stderr:\n{err}"));
        let addr = first[at + 7..].split('/').next().unwrap().to_string();
        Review {
            child,
            addr,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Review {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {} {}", self.head, String::from_utf8_lossy(&self.body))
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One raw HTTP/1.1 exchange: `head` is extra header lines; the Host line
/// is `addr` unless `head` sets one. A server that hangs up early is not an
/// error: what it answered by then is returned.
pub fn exchange(addr: &str, method: &str, path: &str, head: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !head.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += &format!("Host: {addr}\r\n");
    }
    for (k, v) in head {
        req += &format!("{k}: {v}\r\n");
    }
    if !body.is_empty()
        && !head
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        req += &format!("Content-Length: {}\r\n", body.len());
    }
    req += "\r\n";
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let _ = c.write_all(&bytes);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Resp {
        status,
        head,
        body: out[split + 4..].to_vec(),
    }
}

pub fn get(addr: &str, path: &str) -> Resp {
    exchange(addr, "GET", path, &[], b"")
}

/// A label act as the page sends it.
pub fn post_label(addr: &str, csrf: &str, act: &Value) -> Resp {
    exchange(
        addr,
        "POST",
        "/api/labels",
        &[
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", csrf),
            ("Origin", &format!("http://{addr}")),
        ],
        act.to_string().as_bytes(),
    )
}

pub fn labels_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn frames_of(page: &Value) -> Vec<u64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["frame"].as_u64().unwrap())
        .collect()
}

fn is_png(r: &Resp) -> bool {
    r.status == 200
        && r.header("content-type").as_deref() == Some("image/png")
        && r.body.starts_with(b"\x89PNG")
}

/// Turns an evidence folder the daemon wrote (format /2) into one an
/// older daemon wrote (/1: no `frame.png`).
fn make_format_1(folder: &Path) {
    std::fs::remove_file(folder.join("frame.png")).unwrap();
    let jp = folder.join("evidence.json");
    let mut rec: Value = serde_json::from_str(&std::fs::read_to_string(&jp).unwrap()).unwrap();
    rec["format"] = json!("gcm-inspect-evidence/1");
    rec.as_object_mut().unwrap().remove("frame");
    std::fs::write(&jp, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
}

#[test]
fn review_serves_gallery_filters_detail_summary_and_evidence_of_both_formats() {
    let fx = fixture(6);
    make_format_1(fx.lines[0].evidence.as_ref().unwrap());
    let r = Review::start(fx.root(), &["--log", p(&fx.log()), "--bind", "127.0.0.1:0"]);
    let a = r.addr.as_str();
    page_and_gallery(a, &fx);
    filters(a, &fx);
    detail(a, &fx);
    summary(a, &fx);
    assert_eq!(get(a, "/nothing").status, 404);
    assert_eq!(exchange(a, "DELETE", "/api/summary", &[], b"").status, 405);
}

/// The newest first, as the gallery orders them, of the lines `keep` keeps.
fn newest_first(fx: &Fixture, keep: &dyn Fn(&LogLine) -> bool) -> Vec<u64> {
    fx.lines
        .iter()
        .rev()
        .filter(|l| keep(l))
        .map(|l| l.frame)
        .collect()
}

/// The page, its assets, `/api/meta` and the gallery's pages.
fn page_and_gallery(a: &str, fx: &Fixture) {
    let newest = fx.lines.last().unwrap();
    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/static/app.js"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    for (path, kind) in [
        ("/static/app.js", "text/javascript"),
        ("/static/app.css", "text/css"),
    ] {
        let s = get(a, path);
        assert_eq!(s.status, 200, "{path}");
        assert!(
            s.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
    }
    let meta = get(a, "/api/meta").json();
    assert_eq!(meta["classes"], json!(CLASSES));
    assert_eq!(meta["models"].as_array().unwrap().len(), 2);
    assert_eq!(meta["decisions"], 12);
    assert_eq!(meta["csrf"].as_str().unwrap().len(), 64);

    // Gallery: newest first, paged.
    let all = newest_first(fx, &|_| true);
    let g = get(a, "/api/decisions?per=5&page=1").json();
    assert_eq!(
        (g["total"].as_u64(), g["pages"].as_u64()),
        (Some(12), Some(3))
    );
    assert_eq!(frames_of(&g), all[5..10]);
    let first = &get(a, "/api/decisions").json()["items"][0];
    assert_eq!(first["frame"], newest.frame);
    assert_eq!(
        first["thumb"],
        format!("/evidence/{}/input.png", newest.frame)
    );
}

/// Every filter, against the log itself.
fn filters(a: &str, fx: &Fixture) {
    let newest = fx.lines.last().unwrap();
    let all = newest_first(fx, &|_| true);
    let expect = |keep: &dyn Fn(&LogLine) -> bool| newest_first(fx, keep);
    let q = |query: &str| frames_of(&get(a, &format!("/api/decisions?per=500&{query}")).json());
    for c in CLASSES {
        assert_eq!(
            q(&format!("class={c}")),
            expect(&|l| l.class == c),
            "class {c}"
        );
    }
    let mut margins: Vec<f32> = fx.lines.iter().map(|l| l.margin).collect();
    margins.sort_by(f32::total_cmp);
    let (lo, hi) = (margins[3], margins[8]);
    assert_eq!(
        q(&format!("margin_min={lo}&margin_max={hi}")),
        expect(&|l| l.margin >= lo && l.margin <= hi)
    );
    let pr = |l: &LogLine| l.probabilities[l.class_index];
    let mid = pr(&fx.lines[4]);
    assert_eq!(q(&format!("p_min={mid}")), expect(&|l| pr(l) >= mid));
    assert_eq!(q(&format!("p_max={mid}")), expect(&|l| pr(l) <= mid));
    assert_eq!(q("divergent=1"), expect(&|l| l.divergent));
    let (t0, t1) = (fx.lines[2].captured_unix_us, fx.lines[7].captured_unix_us);
    assert_eq!(
        q(&format!("from={t0}&to={t1}")),
        expect(&|l| (t0..=t1).contains(&l.captured_unix_us))
    );
    let model = &newest.model;
    assert_eq!(
        q(&format!("model={}", &model[..12])),
        expect(&|l| l.model == *model)
    );
    assert_eq!(q("status=unreviewed"), all);
    assert!(q("status=corrected").is_empty());
    assert_eq!(get(a, "/api/decisions?margin_min=wide").status, 400);
    assert_eq!(get(a, "/api/decisions?status=maybe").status, 400);
}

/// The detail of the newest decision (evidence format /2: every image
/// served, the frame too) and of the oldest (format /1), with neighbours.
fn detail(a: &str, fx: &Fixture) {
    let newest = fx.lines.last().unwrap();
    let all = newest_first(fx, &|_| true);
    let d = get(a, &format!("/api/decisions/{}", newest.frame)).json();
    assert_eq!(d["line"]["frame"], newest.frame);
    assert_eq!(d["line"]["model"], newest.model.as_str());
    assert_eq!(
        (d["prev"].clone(), d["next"].clone()),
        (Value::Null, json!(all[1]))
    );
    assert_eq!(d["status"], "unreviewed");
    let ev = &d["evidence"];
    assert_eq!(ev["state"], "kept");
    assert_eq!(ev["format"], "gcm-inspect-evidence/2");
    let roles: Vec<&str> = ev["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["decided", "runner-up"]);
    assert_eq!(ev["classes"][0]["class"], newest.class.as_str());
    let mut urls = vec![
        ev["frame"].clone(),
        ev["input"].clone(),
        ev["panel"].clone(),
    ];
    for c in ev["classes"].as_array().unwrap() {
        urls.extend([c["cwm"].clone(), c["pos"].clone(), c["neg"].clone()]);
    }
    for u in &urls {
        let u = u.as_str().unwrap_or_else(|| panic!("{ev}"));
        assert!(is_png(&get(a, u)), "{u}");
    }
    let framed = get(a, ev["frame"].as_str().unwrap());
    let img = image::load_from_memory(&framed.body).unwrap();
    let input = image::load_from_memory(&get(a, ev["input"].as_str().unwrap()).body).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (24, 24),
        "the replayed cell at full size"
    );
    assert_ne!(img.width(), input.width(), "frame.png, not input.png");
    // A format /1 folder: no frame, the rest as before; neighbours follow the filter.
    let old = &fx.lines[0];
    let d = get(
        a,
        &format!("/api/decisions/{}?class={}", old.frame, old.class),
    )
    .json();
    assert_eq!(d["evidence"]["format"], "gcm-inspect-evidence/1");
    assert_eq!(d["evidence"]["frame"], Value::Null);
    assert!(is_png(&get(a, d["evidence"]["input"].as_str().unwrap())));
    let same_class = newest_first(fx, &|l| l.class == old.class);
    assert_eq!(d["total"].as_u64(), Some(same_class.len() as u64));
    assert_eq!(d["prev"], json!(same_class[same_class.len() - 2]));
    assert_eq!(get(a, "/api/decisions/999999").status, 404);
}

fn summary(a: &str, fx: &Fixture) {
    let s = get(a, "/api/summary").json();
    assert_eq!(s["decisions"], 12);
    for c in CLASSES {
        let n = fx.lines.iter().filter(|l| l.class == c).count() as u64;
        assert_eq!(s["per_class"][c].as_u64().unwrap_or(0), n, "{s}");
    }
    assert_eq!(s["per_status"]["unreviewed"], 12);
    let bucketed: u64 = s["over_time"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["decisions"].as_u64().unwrap())
        .sum();
    assert_eq!(bucketed, 12);
}

#[test]
fn review_labels_are_appended_newest_wins_undo_is_a_line_and_the_log_is_untouched() {
    let fx = fixture(3);
    let before: Vec<Vec<u8>> = log_files_bytes(&fx.log());
    let labels_dir = fx.root().join("labels");
    let r = Review::start(
        fx.root(),
        &[
            "--log",
            p(&fx.log()),
            "--bind",
            "127.0.0.1:0",
            "--labels",
            p(&labels_dir),
            "--reviewer",
            "ana",
        ],
    );
    let a = r.addr.as_str();
    let csrf = get(a, "/api/meta").json()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let (f0, f1) = (&fx.lines[0], &fx.lines[1]);
    let other = |l: &LogLine| CLASSES.iter().find(|c| **c != l.class).unwrap().to_string();

    let ok = post_label(a, &csrf, &json!({"frame": f0.frame, "label": f0.class}));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["status"], "confirmed");
    let c = post_label(a, &csrf, &json!({"frame": f1.frame, "label": other(f1)})).json();
    assert_eq!(c["status"], "corrected");
    // A second opinion on f0 wins; its undo restores the confirmation.
    assert_eq!(
        post_label(a, &csrf, &json!({"frame": f0.frame, "label": other(f0)})).json()["status"],
        "corrected"
    );
    let u = post_label(a, &csrf, &json!({"frame": f0.frame, "undo": true})).json();
    assert_eq!(
        (u["status"].as_str(), u["label"].as_str()),
        (Some("confirmed"), Some(f0.class.as_str()))
    );

    let lines = labels_lines(&labels_dir.join("labels.jsonl"));
    assert_eq!(lines.len(), 4);
    let l = &lines[1];
    assert_eq!(l["frame"], f1.frame);
    assert_eq!(l["label"], other(f1).as_str());
    assert_eq!(l["previous_decision"], f1.class.as_str());
    assert_eq!(l["model"], f1.model.as_str());
    assert_eq!(l["reviewer"], "ana");
    assert_eq!(l["evidence"], json!(f1.evidence));
    assert!(l["time_unix_us"].as_u64().unwrap() > 1_600_000_000_000_000);
    assert_eq!(lines[3]["undo"], true);

    let confirmed = frames_of(&get(a, "/api/decisions?status=confirmed").json());
    assert_eq!(confirmed, vec![f0.frame]);
    assert_eq!(
        frames_of(&get(a, "/api/decisions?status=corrected").json()),
        vec![f1.frame]
    );
    let d = get(a, &format!("/api/decisions/{}", f0.frame)).json();
    assert_eq!(d["history"].as_array().unwrap().len(), 3);
    let s = get(a, "/api/summary").json();
    assert_eq!(
        (
            s["per_status"]["confirmed"].as_u64(),
            s["per_status"]["corrected"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let pos = |c: &str| CLASSES.iter().position(|k| *k == c).unwrap();
    assert_eq!(s["confusion"][pos(&f0.class)][pos(&f0.class)], 1);
    assert_eq!(s["confusion"][pos(&f1.class)][pos(&other(f1))], 1);

    // Refused acts write nothing.
    assert_eq!(
        post_label(a, &csrf, &json!({"frame": f0.frame, "label": "dent"})).status,
        400
    );
    assert_eq!(
        post_label(a, &csrf, &json!({"frame": 424242, "label": "ok"})).status,
        404
    );
    assert_eq!(
        post_label(a, &csrf, &json!({"frame": fx.lines[2].frame, "undo": true})).status,
        409
    );
    assert_eq!(
        post_label(a, &csrf, &json!({"frame": f0.frame})).status,
        400
    );
    assert_eq!(labels_lines(&labels_dir.join("labels.jsonl")).len(), 4);
    drop(r);
    restart_cuts_a_torn_tail(&fx, &labels_dir, f0.frame);
    assert_eq!(
        log_files_bytes(&fx.log()),
        before,
        "the decision log is never written"
    );
}

/// A torn tail is cut when the page starts again; the labels so far stay
/// (`confirmed`: the one confirmed frame).
fn restart_cuts_a_torn_tail(fx: &Fixture, labels_dir: &Path, confirmed: u64) {
    let path = labels_dir.join("labels.jsonl");
    let whole = std::fs::read(&path).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"frame":1,"lab"#);
    std::fs::write(&path, torn).unwrap();
    let r = Review::start(
        fx.root(),
        &[
            "--log",
            p(&fx.log()),
            "--bind",
            "127.0.0.1:0",
            "--labels",
            p(labels_dir),
        ],
    );
    assert_eq!(std::fs::read(&path).unwrap(), whole);
    assert!(r.stderr().contains("cut a torn tail"), "{}", r.stderr());
    let now = frames_of(&get(&r.addr, "/api/decisions?status=confirmed").json());
    assert_eq!(now, vec![confirmed]);
}

fn log_files_bytes(dir: &Path) -> Vec<Vec<u8>> {
    gcm_inspect::pipeline::sink::log::log_files(dir)
        .unwrap()
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect()
}

#[test]
fn review_serves_no_file_outside_the_evidence_folder() {
    let fx = fixture(2);
    let root = fx.root();
    let ev = |i: usize| fx.lines[i].evidence.clone().unwrap();
    std::fs::write(root.join("secret.png"), b"\x89PNG secret").unwrap();
    // Frame 1: its input.png is a symlink out of the evidence folder.
    let linked = ev(1).join("input.png");
    std::fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink(root.join("secret.png"), &linked).unwrap();
    // Frame 2: the whole evidence folder is a symlink to a copy outside.
    let outside = root.join("elsewhere");
    std::fs::rename(ev(2), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, ev(2)).unwrap();
    std::fs::write(ev(0).join("notes.txt"), "not evidence").unwrap();
    let r = Review::start(root, &["--log", p(&fx.log()), "--bind", "127.0.0.1:0"]);
    let a = r.addr.as_str();
    let f = |i: usize| fx.lines[i].frame;
    assert!(is_png(&get(a, &format!("/evidence/{}/input.png", f(0)))));
    assert_eq!(
        get(a, &format!("/evidence/{}/evidence.json", f(0))).status,
        200
    );
    let refused = [
        format!("/evidence/{}/input.png", f(1)),
        format!("/evidence/{}/input.png", f(2)),
        format!("/evidence/{}/evidence.json", f(2)),
        format!("/evidence/{}/notes.txt", f(0)),
        format!("/evidence/{}/../../secret.png", f(0)),
        format!("/evidence/{}/..%2F..%2Fsecret.png", f(0)),
        format!("/evidence/{}/%2e%2e/%2e%2e/secret.png", f(0)),
        format!("/evidence/{}/%2E%2E%2F%2E%2E%2Fdaemon.yaml", f(0)),
        format!("/evidence/{}/..%5c..%5csecret.png", f(0)),
        format!("/evidence/{}/input.png%00", f(0)),
        "/evidence/x/input.png".to_string(),
        "/evidence/999/input.png".to_string(),
        "/static/../../Cargo.toml".to_string(),
        "/static/%2e%2e/%2e%2e/Cargo.toml".to_string(),
        "/static/app.js/..".to_string(),
        "/out/log/decisions.jsonl".to_string(),
        format!("/{}", root.join("secret.png").display()),
    ];
    for path in &refused {
        let resp = get(a, path);
        assert_eq!(resp.status, 404, "{path}: {}", resp.text());
        assert!(!resp.text().contains("secret"), "{path}");
    }
    // The detail view reports the symlinked-out folder as unreadable.
    let d = get(a, &format!("/api/decisions/{}", f(2))).json();
    assert_eq!(d["evidence"]["state"], "unreadable");
}

#[test]
fn review_refuses_cross_site_posts_foreign_hosts_and_oversized_requests() {
    let fx = fixture(2);
    let r = Review::start(fx.root(), &["--log", p(&fx.log()), "--bind", "127.0.0.1:0"]);
    let a = r.addr.as_str();
    let csrf = get(a, "/api/meta").json()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let act = json!({"frame": fx.lines[0].frame, "label": "ok"}).to_string();
    let post = |head: &[(&str, &str)], body: &[u8]| exchange(a, "POST", "/api/labels", head, body);
    let json_ct = ("Content-Type", "application/json");
    let token = ("X-CSRF-Token", csrf.as_str());
    // No token, a wrong one, a form post, a foreign Origin: 403.
    assert_eq!(post(&[json_ct], act.as_bytes()).status, 403);
    assert_eq!(
        post(
            &[json_ct, ("X-CSRF-Token", &"0".repeat(64))],
            act.as_bytes()
        )
        .status,
        403
    );
    let form = post(
        &[("Content-Type", "application/x-www-form-urlencoded"), token],
        act.as_bytes(),
    );
    assert_eq!(form.status, 403);
    let evil = post(
        &[json_ct, token, ("Origin", "http://evil.example")],
        act.as_bytes(),
    );
    assert_eq!(evil.status, 403, "{}", evil.text());
    assert_eq!(exchange(a, "GET", "/api/labels", &[], b"").status, 405);
    // DNS rebinding: a foreign Host is refused on a loopback server.
    let rebound = exchange(a, "GET", "/api/meta", &[("Host", "evil.example:80")], b"");
    assert_eq!(rebound.status, 421);
    assert!(!rebound.text().contains(&csrf));
    // Oversized: a declared body, a chunked one, a request head.
    let big = format!("{{\"frame\":0,\"label\":\"{}\"}}", "x".repeat(5000));
    assert_eq!(post(&[json_ct, token], big.as_bytes()).status, 413);
    let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let chunked = post(
        &[json_ct, token, ("Transfer-Encoding", "chunked")],
        chunk.as_bytes(),
    );
    assert_eq!(chunked.status, 413);
    let long = "a".repeat(20 << 10);
    assert_eq!(
        exchange(a, "GET", "/api/meta", &[("X-Long", &long)], b"").status,
        431
    );
    assert_eq!(get(a, &format!("/api/decisions?class={long}")).status, 431);
    assert!(labels_lines(&fx.log().join("labels.jsonl")).is_empty());
    // The page's own request passes.
    let ok = post(
        &[json_ct, token, ("Origin", &format!("http://{a}"))],
        act.as_bytes(),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(labels_lines(&fx.log().join("labels.jsonl")).len(), 1);
}

#[test]
fn review_off_loopback_needs_a_token_file_and_checks_tokens() {
    let fx = fixture(1);
    let root = fx.root();
    let log = fx.log();
    let err = fails(&["review", "--log", p(&log), "--bind", "0.0.0.0:0"], 64);
    assert!(err.contains("--token-file"), "{err}");
    let tokens = root.join("tokens");
    std::fs::write(&tokens, "ana:short\n").unwrap();
    let err = fails(
        &[
            "review",
            "--log",
            p(&log),
            "--bind",
            "0.0.0.0:0",
            "--token-file",
            p(&tokens),
        ],
        78,
    );
    assert!(err.contains("line 1") && err.contains("tokens"), "{err}");
    std::fs::write(
        &tokens,
        "# reviewers\nana:ana-secret-token-0001\nbo:bo-secret-token-00002\n",
    )
    .unwrap();
    let r = Review::start(
        root,
        &[
            "--log",
            p(&log),
            "--bind",
            "0.0.0.0:0",
            "--token-file",
            p(&tokens),
        ],
    );
    let port = r.addr.rsplit(':').next().unwrap();
    let a = format!("127.0.0.1:{port}");
    for path in ["/", "/api/meta", "/static/app.js", "/api/decisions"] {
        assert_eq!(get(&a, path).status, 401, "{path}");
    }
    let wrong = exchange(
        &a,
        "GET",
        "/api/meta",
        &[("Authorization", "Bearer ana-secret-token-0002")],
        b"",
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(get(&a, "/?token=nope-nope-nope-nope").status, 401);
    // The browser's way in: the token once in the address, then a cookie.
    let login = get(&a, "/?token=bo-secret-token-00002");
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location").as_deref(), Some("/"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let jar = cookie.split(';').next().unwrap().to_string();
    let meta = exchange(&a, "GET", "/api/meta", &[("Cookie", &jar)], b"").json();
    assert_eq!(meta["reviewer"], "bo");
    // A script's way in: the bearer token; its name is the reviewer.
    let bearer = ("Authorization", "Bearer ana-secret-token-0001");
    let csrf = meta["csrf"].as_str().unwrap();
    let act = json!({"frame": fx.lines[0].frame, "label": "crack"}).to_string();
    let posted = exchange(
        &a,
        "POST",
        "/api/labels",
        &[
            bearer,
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", csrf),
        ],
        act.as_bytes(),
    );
    assert_eq!(posted.status, 200, "{}", posted.text());
    let lines = labels_lines(&log.join("labels.jsonl"));
    assert_eq!(lines[0]["reviewer"], "ana");
}

/// A free port on loopback (for chromedriver).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `chromedriver` on a free port; killed when dropped. Panics (the test
/// fails, it is not skipped) when Debian's chromium-driver is missing:
/// scripts/install-deps.sh installs it.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver cannot be started ({e}): run scripts/install-deps.sh (Debian's chromium and chromium-driver)")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn review_in_a_real_browser_filters_opens_and_relabels_with_the_keyboard() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run scripts/install-deps.sh"
    );
    let fx = fixture(4);
    let r = Review::start(
        fx.root(),
        &[
            "--log",
            p(&fx.log()),
            "--bind",
            "127.0.0.1:0",
            "--reviewer",
            "browser",
        ],
    );
    let driver = Driver::start();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("review-browser.png");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (frame, label) = rt.block_on(browse(&r.addr, driver.1, &fx, &shot));
    println!("review page screenshot: {}", shot.display());
    let lines = labels_lines(&fx.log().join("labels.jsonl"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["frame"], frame);
    assert_eq!(lines[0]["label"], label.as_str());
    assert_eq!(lines[0]["reviewer"], "browser");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
}

/// Polls `f` until it returns `Some`, for up to 20 s.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The browser session: gallery, class filter, a decision opened, a class
/// picked with its number key. Returns the frame and the label given.
async fn browse(addr: &str, driver_port: u16, fx: &Fixture, shot: &Path) -> (u64, String) {
    use fantoccini::{ClientBuilder, Locator};
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }
    }))
    .unwrap();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a chromium session through chromedriver");
    c.goto(&format!("http://{addr}/")).await.unwrap();
    let n = until("the gallery", || async {
        let cards = c.find_all(Locator::Css("#grid .card")).await.ok()?;
        (!cards.is_empty()).then_some(cards.len())
    })
    .await;
    assert_eq!(n, fx.lines.len());
    // Filter by the class of the oldest decision.
    let class = fx.lines[0].class.clone();
    let want: Vec<u64> = fx
        .lines
        .iter()
        .rev()
        .filter(|l| l.class == class)
        .map(|l| l.frame)
        .collect();
    c.find(Locator::Css("#f-class"))
        .await
        .unwrap()
        .select_by_value(&class)
        .await
        .unwrap();
    c.find(Locator::Css("#apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = until("the filtered gallery", || async {
        let cards = c.find_all(Locator::Css("#grid .card")).await.ok()?;
        let mut frames = Vec::new();
        for k in &cards {
            frames.push(k.attr("data-frame").await.ok()??.parse::<u64>().ok()?);
        }
        (frames == want).then_some(frames)
    })
    .await;
    // Open the first one; pick the other class with its number key.
    let frame = shown[0];
    c.find(Locator::Css(&format!(".card[data-frame='{frame}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the detail view", || shows(&c, frame, "unreviewed")).await;
    let classes = &fx.lines[0].classes;
    let k = classes.iter().position(|x| *x != class).unwrap();
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(&(k + 1).to_string())
        .await
        .unwrap();
    let labels = fx.log().join("labels.jsonl");
    until("labels.jsonl", || async {
        (!labels_lines(&labels).is_empty()).then_some(())
    })
    .await;
    // The page moves on to the next decision; back with the left arrow, the
    // labelled one shows as corrected.
    if let Some(&next) = shown.get(1) {
        until("the next decision", || shows(&c, next, "unreviewed")).await;
        c.find(Locator::Css("body"))
            .await
            .unwrap()
            .send_keys("\u{e012}")
            .await
            .unwrap();
    }
    until("the corrected status", || shows(&c, frame, "corrected")).await;
    let png = c.screenshot().await.unwrap();
    std::fs::write(shot, png).unwrap();
    summary_counts_one_correction(&c, addr, fx.lines.len()).await;
    c.close().await.unwrap();
    (frame, classes[k].clone())
}

/// `Some` when the detail view shows `frame` with `status` in its facts.
async fn shows(c: &fantoccini::Client, frame: u64, status: &str) -> Option<()> {
    use fantoccini::Locator;
    let title = c
        .find(Locator::Css("#d-title"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let facts = c
        .find(Locator::Css("#d-facts"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    (title.starts_with(&format!("Frame {frame}:")) && facts.contains(status)).then_some(())
}

/// A copy of the log and evidence moved elsewhere: `--evidence` finds the
/// folders by name; without it they are reported as deleted.
#[test]
fn review_finds_moved_evidence_with_the_evidence_option() {
    let fx = fixture(1);
    let moved = fx.root().join("copy");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::rename(evidence_dir(fx.root()), moved.join("evidence")).unwrap();
    let frame = fx.lines.last().unwrap().frame;
    let path = format!("/api/decisions/{frame}");
    let r = Review::start(fx.root(), &["--log", p(&fx.log()), "--bind", "127.0.0.1:0"]);
    assert_eq!(get(&r.addr, &path).json()["evidence"]["state"], "deleted");
    let r = Review::start(
        fx.root(),
        &[
            "--log",
            p(&fx.log()),
            "--evidence",
            p(&moved.join("evidence")),
            "--bind",
            "127.0.0.1:0",
            "--labels",
            p(&moved),
        ],
    );
    let ev = get(&r.addr, &path).json()["evidence"].clone();
    assert_eq!(ev["state"], "kept", "{ev}");
    assert!(is_png(&get(&r.addr, ev["input"].as_str().unwrap())));
    let thumb = &get(&r.addr, "/api/decisions").json()["items"][0]["thumb"];
    assert_eq!(thumb, &json!(format!("/evidence/{frame}/input.png")));
}

/// The summary view counts the one correction.
async fn summary_counts_one_correction(c: &fantoccini::Client, addr: &str, n: usize) {
    use fantoccini::Locator;
    c.goto(&format!("http://{addr}/#/summary")).await.unwrap();
    let want: Vec<String> = [
        "unreviewed",
        &(n - 1).to_string(),
        "confirmed",
        "0",
        "corrected",
        "1",
    ]
    .map(String::from)
    .to_vec();
    until("the summary's label status", || async {
        let mut cells = Vec::new();
        for td in c.find_all(Locator::Css("#s-status td")).await.ok()? {
            cells.push(td.text().await.ok()?);
        }
        (cells == want).then_some(())
    })
    .await;
}
