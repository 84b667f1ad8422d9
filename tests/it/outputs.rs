//! Decisions to the line with real receivers on 127.0.0.1: a mosquitto
//! broker (started and stopped by the tests), HTTP servers (a good, a
//! failing and a slow one) and a Modbus TCP server (tokio-modbus's).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use gcm_inspect::data::image_io::save_grey;
use gcm_inspect::data::synth::{self, Kind};
use gcm_inspect::outputs::{Payload, SCHEMA};
use gcm_inspect::pipeline::sink::log::LogLine;
use gcm_inspect::verdict::Verdict;

use crate::daemon_util::*;
use crate::util::p;

/// A replay folder of 16x16 frames: cells, a black one and a white one
/// (sent to review by the health checks).
fn frames(root: &Path, cells: usize) -> PathBuf {
    let dir = root.join("frames");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..cells {
        let px = synth::sample(5, i, 16, &[Kind::Crack, Kind::Ok]).1;
        save_grey(&dir.join(format!("c{i:02}.png")), 16, 16, px).unwrap();
    }
    save_grey(&dir.join("x_black.png"), 16, 16, vec![0; 256]).unwrap();
    save_grey(&dir.join("y_white.png"), 16, 16, vec![255; 256]).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the daemon to its end over a replay folder with `extra` config;
/// returns the summary and the log.
fn replay(root: &Path, cells: usize, extra: &str) -> (serde_json::Value, Vec<LogLine>) {
    let model = root.join("model");
    tiny_model(&model, 3);
    let dir = frames(root, cells);
    let src = format!("  replay:\n    dir: {}\n", dir.display());
    let extra = format!("decision:\n  reject_classes: [crack]\n{extra}");
    let cfg = config(root, &model, &src, &extra);
    let (st, out, err) = Daemon::start(root, &["--config", p(&cfg)]).wait(120);
    assert!(st.success(), "{err}");
    (summary(&out), log_lines(root))
}

/// The summary's counts for one output: sent, dropped, failed.
fn counts(s: &serde_json::Value, output: &str) -> [u64; 3] {
    let o = &s["outputs"][output];
    ["sent", "dropped", "failed"].map(|k| o[k].as_u64().unwrap_or_else(|| panic!("{s}")))
}

// ---------------------------------------------------------------- MQTT

/// A mosquitto broker on a loopback port, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    conf: PathBuf,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        Broker::start_with(dir, port, "allow_anonymous true\n")
    }

    /// A broker that admits `user` with `password` only.
    fn with_password(dir: &Path, port: u16, user: &str, password: &str) -> Broker {
        let passwd = dir.join("mosquitto.passwd");
        let st = Command::new("mosquitto_passwd")
            .args(["-b", "-c", p(&passwd), user, password])
            .status()
            .expect("mosquitto_passwd (package mosquitto) runs");
        assert!(st.success());
        let auth = format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        );
        Broker::start_with(dir, port, &auth)
    }

    fn start_with(dir: &Path, port: u16, auth: &str) -> Broker {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\n{auth}persistence false\n"),
        )
        .unwrap();
        Broker::spawn(conf, port)
    }

    fn spawn(conf: PathBuf, port: u16) -> Broker {
        let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed (scripts/install-deps.sh installs it)");
        let child = Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(10, "mosquitto to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Broker { child, port, conf }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same broker again, on the same port.
    fn restart(mut self) -> Broker {
        self.kill();
        Broker::spawn(self.conf.clone(), self.port)
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a subscriber sees: messages (topic, payload), and a mark each time
/// its subscription is (re)established.
enum Seen {
    Subscribed,
    Message(String, Box<Payload>),
}

/// A subscriber to `filter`, resubscribing after every reconnect.
fn subscribe(port: u16, filter: &str) -> Receiver<Seen> {
    subscribe_as(port, filter, None)
}

fn subscribe_as(port: u16, filter: &str, login: Option<(&str, &str)>) -> Receiver<Seen> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let (tx, rx) = unbounded();
    let mut o = MqttOptions::new(format!("test-sub-{port}"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    let (client, mut conn) = Client::new(o, 16);
    let filter = filter.to_string();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let sent = match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                        .unwrap();
                    Ok(())
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => tx.send(Seen::Subscribed),
                Ok(Event::Incoming(Packet::Publish(m))) => {
                    let payload = serde_json::from_slice(&m.payload).unwrap();
                    tx.send(Seen::Message(m.topic.clone(), Box::new(payload)))
                }
                Ok(_) => Ok(()),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    Ok(())
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Seen::Subscribed) => rx,
        _ => panic!("the test subscriber could not subscribe on port {port}"),
    }
}

/// Messages from `rx` until `done` says enough or `secs` pass.
fn collect(
    rx: &Receiver<Seen>,
    secs: u64,
    mut done: impl FnMut(&[(String, Payload)]) -> bool,
) -> Vec<(String, Payload)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Seen::Message(t, m)) => got.push((t, *m)),
            Ok(Seen::Subscribed) => {}
            Err(_) => break,
        }
    }
    got
}

#[test]
fn every_decision_reaches_the_broker_with_its_verdict_and_a_filtered_output_only_its_own() {
    // The replay's black and white frames are the reviews.
    let t = tempfile::tempdir().unwrap();
    let broker = Broker::start(t.path(), free_port());
    let rx = subscribe(broker.port, "gcm/#");
    let extra = format!(
        "station: line-7\noutputs:\n  - mqtt: {{url: '{url}'}}\n  - name: reviews\n    verdicts: [review]\n    mqtt: {{url: '{url}', topic: 'gcm/{{station}}/{{verdict}}/{{class}}', qos: 0}}\n",
        url = broker.url()
    );
    let (s, lines) = replay(t.path(), 8, &extra);
    assert_eq!(lines.len(), 10, "{s}");
    let flagged: Vec<&LogLine> = lines
        .iter()
        .filter(|l| l.verdict == Some(Verdict::Review))
        .collect();
    assert_eq!(flagged.len(), 2, "{s}");
    let want = lines.len() + flagged.len();
    let got = collect(&rx, 20, |g| g.len() >= want);
    let (all, rejects): (Vec<_>, Vec<_>) = got
        .iter()
        .partition(|(topic, _)| topic == "gcm/line-7/decision");
    // Every decision once, in order, as logged.
    let ids: Vec<u64> = all.iter().map(|(_, m)| m.frame).collect();
    assert_eq!(ids, lines.iter().map(|l| l.frame).collect::<Vec<_>>());
    for ((_, m), l) in all.iter().zip(&lines) {
        assert_eq!(m.schema, SCHEMA);
        assert_eq!(m.station, "line-7");
        assert_eq!(Some(m.verdict), l.verdict, "frame {}", l.frame);
        assert_eq!(Some(&m.reason), l.reason.as_ref());
        assert_eq!(
            (&m.class, &m.scores, &m.model),
            (&l.class, &l.scores, &l.model)
        );
        assert_eq!(m.source, l.source);
    }
    // The filtered output: only the reviews, on their own topic.
    assert_eq!(rejects.len(), flagged.len(), "{rejects:?}");
    for ((topic, m), l) in rejects.iter().zip(&flagged) {
        assert_eq!(m.frame, l.frame);
        let v = l.verdict.unwrap().name();
        assert_eq!(*topic, format!("gcm/line-7/{v}/{}", l.class));
    }
    assert_eq!(counts(&s, "mqtt"), [10, 0, 0], "{s}");
    assert_eq!(counts(&s, "reviews"), [2, 0, 0], "{s}");
    eprintln!(
        "mqtt: {} decisions published, {} to the review topic",
        all.len(),
        rejects.len()
    );
}

#[test]
fn the_daemon_keeps_deciding_while_the_broker_is_down_and_publishes_again_after() {
    let t = tempfile::tempdir().unwrap();
    let broker = Broker::start(t.path(), free_port());
    let rx = subscribe(broker.port, "gcm/#");
    let extra = format!(
        "station: s1\noutputs:\n  - mqtt: {{url: '{}', reconnect_max_ms: 200}}\n",
        broker.url()
    );
    let setup_dir = t.path().join("run");
    std::fs::create_dir_all(&setup_dir).unwrap();
    let model = setup_dir.join("model");
    tiny_model(&model, 4);
    let cfg = config(&setup_dir, &model, &synthetic(25), &extra);
    let mut d = Daemon::start(&setup_dir, &["--config", p(&cfg)]);
    let before = collect(&rx, 30, |g| g.len() >= 5);
    assert!(before.len() >= 5, "no messages before the broker went down");
    let addr = d.metrics_addr();

    let mut broker = broker;
    broker.kill();
    let down_at = count_lines(&setup_dir);
    wait_for(30, "decisions while the broker is down", || {
        count_lines(&setup_dir) >= down_at + 50
    });
    let page = http_get(&addr, "/metrics");
    let failures = metric(&page, "gcm_output_failures_total{output=\"mqtt\"}");
    assert!(failures >= 1.0, "{page}");

    let last_before = before.last().unwrap().1.frame;
    let broker = broker.restart();
    let after = collect(&rx, 30, |g| {
        g.iter()
            .filter(|(_, m)| m.frame > down_at as u64 + 50)
            .count()
            >= 5
    });
    d.signal("TERM");
    let (st, out, err) = d.wait(60);
    assert!(st.success(), "{err}");
    drop(broker);
    let s = summary(&out);
    let [sent, _, failed] = counts(&s, "mqtt");
    assert!(failed >= 1 && sent >= 10, "{s}");
    let resumed: Vec<u64> = after
        .iter()
        .map(|(_, m)| m.frame)
        .filter(|f| *f > last_before)
        .collect();
    assert!(resumed.len() >= 5, "{resumed:?}");
    assert!(err.contains("reachable again"), "{err}");
    // The log is the record: every decision, with no gap for the outage.
    let lines = log_lines(&setup_dir);
    let ids: Vec<u64> = lines.iter().map(|l| l.frame).collect();
    assert_eq!(s["decisions"].as_u64(), Some(ids.len() as u64));
    eprintln!(
        "broker down and back: {} decisions, {sent} sent, {failed} failures counted, {} dropped",
        ids.len(),
        counts(&s, "mqtt")[1]
    );
}

#[test]
fn a_broker_that_wants_a_password_gets_it_from_the_file_and_refuses_a_wrong_one() {
    let t = tempfile::tempdir().unwrap();
    let broker = Broker::with_password(t.path(), free_port(), "line", "pa55");
    let rx = subscribe_as(broker.port, "gcm/#", Some(("line", "pa55")));
    let run = |name: &str, password: &str| {
        let root = t.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        // Relative to the config file.
        std::fs::write(root.join("mqtt-pass"), format!("{password}\n")).unwrap();
        let extra = format!(
            "outputs:\n  - mqtt: {{url: '{}', username: line, password_file: mqtt-pass, reconnect_max_ms: 100}}\n",
            broker.url()
        );
        replay(&root, 3, &extra)
    };
    let (s, lines) = run("right", "pa55");
    let got = collect(&rx, 20, |g| g.len() >= lines.len());
    assert_eq!(got.len(), 5, "{s}");
    assert_eq!(counts(&s, "mqtt"), [5, 0, 0], "{s}");
    // A wrong password: the broker refuses the connection; counted, and
    // every frame still decided and logged.
    let (s, lines) = run("wrong", "guess");
    assert_eq!(lines.len(), 5, "{s}");
    let [sent, _, failed] = counts(&s, "mqtt");
    assert_eq!(sent, 0, "{s}");
    assert!(failed >= 1, "{s}");
    assert!(collect(&rx, 1, |g| !g.is_empty()).is_empty());
}

/// A CA and a server certificate for 127.0.0.1 signed by it (openssl),
/// in `dir`: `NAME-ca.pem`, `NAME-server.pem`, `NAME-server.key`.
fn certificates(dir: &Path, name: &str) -> [PathBuf; 3] {
    let f = |s: &str| dir.join(format!("{name}-{s}"));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (ca, ca_key, key, csr, cert) = (
        f("ca.pem"),
        f("ca.key"),
        f("server.key"),
        f("server.csr"),
        f("server.pem"),
    );
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            p(&ca_key),
            "-out",
            p(&ca),
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            p(&key),
            "-out",
            p(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    let ext = f("ext.cnf");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        p(&csr),
        "-CA",
        p(&ca),
        "-CAkey",
        p(&ca_key),
        "-CAcreateserial",
        "-out",
        p(&cert),
        "-days",
        "2",
        "-extfile",
        p(&ext),
    ]);
    [ca, cert, key]
}

#[test]
fn an_mqtts_broker_is_reached_with_the_configured_ca_and_refused_with_another() {
    let t = tempfile::tempdir().unwrap();
    let [ca, cert, key] = certificates(t.path(), "good");
    let [other_ca, _, _] = certificates(t.path(), "other");
    let tls_port = free_port();
    // A plain listener for the test's subscriber, a TLS one for the daemon.
    // (`user root`: run as root, mosquitto would drop to its own user, which
    // cannot read the key in the test's private folder; as another user it
    // has no effect.)
    let tls = format!(
        "allow_anonymous true\nuser root\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca.display(), cert.display(), key.display()
    );
    let broker = Broker::start_with(t.path(), free_port(), &tls);
    let rx = subscribe(broker.port, "gcm/#");
    let run = |name: &str, ca: &Path| {
        let root = t.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        // The CA's path is relative to the config file.
        let extra = format!(
            "outputs:\n  - mqtt: {{url: 'mqtts://127.0.0.1:{tls_port}', ca_file: '../{}', reconnect_max_ms: 100}}\n",
            ca.file_name().unwrap().to_str().unwrap()
        );
        replay(&root, 3, &extra)
    };
    let (s, lines) = run("right", &ca);
    let got = collect(&rx, 20, |g| g.len() >= lines.len());
    assert_eq!(got.len(), 5, "{s}");
    assert_eq!(counts(&s, "mqtt"), [5, 0, 0], "{s}");
    // A CA the broker's certificate does not chain to: no connection,
    // failures counted, every frame still decided.
    let (s, lines) = run("wrong", &other_ca);
    assert_eq!(lines.len(), 5, "{s}");
    let [sent, _, failed] = counts(&s, "mqtt");
    assert_eq!(sent, 0, "{s}");
    assert!(failed >= 1, "{s}");
    assert!(collect(&rx, 1, |g| !g.is_empty()).is_empty());
}

// ------------------------------------------------------------- webhook

/// What a test HTTP server does with request number `n` (from 0).
type Behaviour = Box<dyn Fn(usize) -> (u16, Duration) + Send>;

/// Requests an HTTP server received: (headers, body).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP/1.1 server on loopback; one request per connection.
fn http_server(behave: Behaviour) -> (String, Received) {
    serve_http(behave, None)
}

/// The same over TLS with a certificate chain and key (PEM files).
fn https_server(behave: Behaviour, cert: &Path, key: &Path) -> (String, Received) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    serve_http(behave, Some(Arc::new(cfg)))
}

fn serve_http(behave: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> (String, Received) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/hook", l.local_addr().unwrap());
    let got: Received = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for (n, c) in l.incoming().enumerate() {
            let Ok(c) = c else { continue };
            let mut stream: Box<dyn ReadWrite> = match &tls {
                Some(cfg) => Box::new(rustls::StreamOwned::new(
                    rustls::ServerConnection::new(cfg.clone()).unwrap(),
                    c,
                )),
                None => Box::new(c),
            };
            // A client that gave up on the handshake is not a request.
            let Some((head, body)) = read_request(&mut stream) else {
                continue;
            };
            seen.lock().unwrap().push((head, body));
            let (status, delay) = behave(n);
            std::thread::sleep(delay);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.flush();
        }
    });
    (url, got)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn read_request(c: &mut dyn ReadWrite) -> Option<(String, Vec<u8>)> {
    let mut r = BufReader::new(c);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    if head.is_empty() {
        return None;
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

#[test]
fn an_https_webhook_is_reached_with_the_configured_ca_and_refused_with_another() {
    let t = tempfile::tempdir().unwrap();
    let [_, cert, key] = certificates(t.path(), "good");
    certificates(t.path(), "other");
    let (url, got) = https_server(Box::new(|_| (200, Duration::ZERO)), &cert, &key);
    let run = |name: &str, ca: &str| {
        let root = t.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        // The CA's path is relative to the config file.
        let extra =
            format!("outputs:\n  - webhook: {{url: '{url}', ca_file: '../{ca}', attempts: 1}}\n");
        replay(&root, 3, &extra)
    };
    let (s, lines) = run("right", "good-ca.pem");
    assert_eq!(counts(&s, "webhook"), [5, 0, 0], "{s}");
    let bodies: Vec<Payload> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(
        bodies.iter().map(|m| m.frame).collect::<Vec<_>>(),
        lines.iter().map(|l| l.frame).collect::<Vec<_>>()
    );
    // Another CA: the handshake fails, every decision's delivery fails, none arrives.
    let (s, lines) = run("wrong", "other-ca.pem");
    assert_eq!(lines.len(), 5, "{s}");
    assert_eq!(counts(&s, "webhook"), [0, 0, 5], "{s}");
    assert_eq!(got.lock().unwrap().len(), 5);
}

#[test]
fn a_webhook_gets_every_decision_with_retries_and_its_bearer_token() {
    let t = tempfile::tempdir().unwrap();
    // The first two requests fail (503): the first decision arrives on its third attempt.
    let (url, got) = http_server(Box::new(|n| {
        (if n < 2 { 503 } else { 200 }, Duration::ZERO)
    }));
    let token = t.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let extra = format!(
        "outputs:\n  - webhook: {{url: '{url}', attempts: 3, bearer_token_file: {}}}\n",
        token.display()
    );
    let (s, lines) = replay(t.path(), 4, &extra);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), lines.len() + 2);
    let delivered: Vec<Payload> = got[2..]
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(delivered[0].frame, lines[0].frame);
    // The retried body is the same message.
    assert_eq!(got[0].1, got[2].1);
    for (m, l) in delivered.iter().zip(&lines) {
        assert_eq!((m.frame, Some(m.verdict)), (l.frame, l.verdict));
    }
    for (head, _) in got.iter() {
        assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("uthorization: Bearer s3cret\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json\r\n"),
            "{head}"
        );
    }
    assert_eq!(counts(&s, "webhook"), [lines.len() as u64, 0, 0], "{s}");
}

#[test]
fn a_slow_or_failing_webhook_never_holds_up_the_decisions() {
    let t = tempfile::tempdir().unwrap();
    // Answers every request after 2 s; the daemon's timeout is 100 ms.
    let (slow, _) = http_server(Box::new(|_| (200, Duration::from_secs(2))));
    let (failing, failed) = http_server(Box::new(|_| (500, Duration::ZERO)));
    let extra = format!(
        "outputs:\n  - name: slow\n    queue_capacity: 2\n    webhook: {{url: '{slow}', timeout_ms: 100, attempts: 1}}\n  - name: failing\n    webhook: {{url: '{failing}', attempts: 2}}\n"
    );
    let (s, lines) = replay(t.path(), 10, &extra);
    // Every frame decided and logged, whatever the outputs did.
    assert_eq!(lines.len(), 12, "{s}");
    let [sent, dropped, failures] = counts(&s, "slow");
    assert_eq!(sent, 0, "{s}");
    assert!(dropped >= 1 && failures >= 1, "{s}");
    // Every decision accounted for: failed, or dropped (a full queue, or
    // still queued when the run ended).
    assert_eq!(sent + dropped + failures, 12, "{s}");
    let [sent, dropped, failures] = counts(&s, "failing");
    assert_eq!((sent, dropped), (0, 0), "{s}");
    assert_eq!(failures, 12, "{s}");
    // Two attempts per decision.
    assert_eq!(failed.lock().unwrap().len(), 24);
}

// --------------------------------------------------------------- Modbus

/// A write a PLC received: `coil` or `register`, address, value.
type PlcWrite = (&'static str, u16, u16);

/// A Modbus TCP server that records every write in order.
#[derive(Clone, Default)]
struct Plc {
    writes: Arc<Mutex<Vec<PlcWrite>>>,
}

impl tokio_modbus::server::Service for Plc {
    type Request = tokio_modbus::Request<'static>;
    type Response = tokio_modbus::Response;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        use tokio_modbus::{Request, Response};
        let mut w = self.writes.lock().unwrap();
        std::future::ready(match req {
            Request::WriteSingleCoil(a, v) => {
                w.push(("coil", a, v as u16));
                Ok(Response::WriteSingleCoil(a, v))
            }
            Request::WriteSingleRegister(a, v) => {
                w.push(("register", a, v));
                Ok(Response::WriteSingleRegister(a, v))
            }
            _ => Err(tokio_modbus::ExceptionCode::IllegalFunction),
        })
    }
}

fn modbus_server() -> (String, Plc) {
    let plc = Plc::default();
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap().to_string();
    std_listener.set_nonblocking(true).unwrap();
    let served = plc.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream, addr| {
                let plc = served.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, move |_| {
                        Ok(Some(plc.clone()))
                    })
                }
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        });
    });
    (addr, plc)
}

#[test]
fn a_plc_gets_the_verdict_coils_the_class_and_a_counter_per_decision() {
    let t = tempfile::tempdir().unwrap();
    let (addr, plc) = modbus_server();
    let extra = format!(
        "outputs:\n  - modbus:\n      address: '{addr}'\n      coils: {{ok: 0, ng: 1, review: 2}}\n      class_register: 11\n      counter_register: 10\n"
    );
    let (s, lines) = replay(t.path(), 6, &extra);
    let writes = plc.writes.lock().unwrap().clone();
    // Per decision: three coils, the class, then the counter.
    assert_eq!(writes.len(), 5 * lines.len(), "{writes:?}");
    for (i, (w, l)) in writes.chunks(5).zip(&lines).enumerate() {
        let v = l.verdict.unwrap();
        let coils: BTreeMap<u16, u16> = w[..3]
            .iter()
            .map(|&(k, a, x)| {
                assert_eq!(k, "coil");
                (a, x)
            })
            .collect();
        let want: BTreeMap<u16, u16> = [(0, Verdict::Ok), (1, Verdict::Ng), (2, Verdict::Review)]
            .into_iter()
            .map(|(a, c)| (a, (c == v) as u16))
            .collect();
        assert_eq!(coils, want, "frame {}", l.frame);
        assert_eq!(w[3], ("register", 11, l.class_index as u16));
        assert_eq!(w[4], ("register", 10, i as u16 + 1));
    }
    assert_eq!(counts(&s, "modbus"), [lines.len() as u64, 0, 0], "{s}");
}

// --------------------------------------------------------- check-config

#[test]
fn check_config_lists_the_outputs_warns_of_blocked_hosts_and_reads_the_secrets() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("model");
    tiny_model(&model, 3);
    let token = t.path().join("token");
    let extra = "station: s9\noutputs:\n  - verdicts: [ng]\n    mqtt: {url: 'mqtt://127.0.0.1:1883', topic: 'gcm/{station}/{verdict}'}\n  - webhook: {url: 'http://10.1.2.3:8080/hook', bearer_token_file: token}\n";
    let cfg = config(t.path(), &model, &synthetic(0), extra);
    // The token file does not exist yet: a config error naming it.
    let e = crate::util::fails(&["check-config", p(&cfg)], gcm_inspect::error::exit::CONFIG);
    assert!(
        e.contains(&token.display().to_string()) && e.contains("webhook bearer token"),
        "{e}"
    );
    std::fs::write(&token, "abc\n").unwrap();
    let out = crate::util::ok(&["check-config", p(&cfg)]);
    assert!(
        out.contains(
            "output mqtt: MQTT mqtt://127.0.0.1:1883 topic gcm/s9/{verdict} qos 1; verdicts ng"
        ),
        "{out}"
    );
    assert!(
        out.contains("output webhook: POST http://10.1.2.3:8080/hook"),
        "{out}"
    );
    // Loopback passes quietly; 10.1.2.3 is blocked by the unit's IPAddressDeny.
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].contains("output webhook connects to 10.1.2.3")
            && warnings[0].contains("IPAddressAllow=10.1.2.3"),
        "{out}"
    );
}
