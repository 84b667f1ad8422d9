//! The daemon's `/metrics` and `/healthz` server under hostile clients: a
//! watchdog or load balancer must still get its answer promptly, and the
//! daemon must not buffer what an attacker sends.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::daemon_util::*;
use crate::util::p;

/// Resident memory of process `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A GET whose every step (connect, send, whole answer) fits in `limit`;
/// the time it took and the response, or what went wrong.
fn timed_get(addr: SocketAddr, path: &str, limit: Duration) -> (Duration, Result<String, String>) {
    let t0 = Instant::now();
    let run = || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, limit)?;
        let left = limit
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(1));
        c.set_read_timeout(Some(left))?;
        c.set_write_timeout(Some(left))?;
        write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
        let mut out = Vec::new();
        c.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let r = run().map_err(|e| e.to_string());
    (t0.elapsed(), r)
}

/// A client that opens a request and then sends one more header byte every
/// 200 ms until the server hangs up or `stop`; returns how long it was kept.
fn slow_client(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Option<Duration>> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        c.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
        if c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .is_err()
        {
            return Some(t0.elapsed());
        }
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            if c.write_all(b"a").is_err() {
                return Some(t0.elapsed());
            }
        }
        None
    })
}

/// A client that streams one 32 MiB header line (as fast as the server takes
/// it); returns the bytes it got out before the server refused the rest.
fn big_header_client(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return 0;
        };
        let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
        let mut sent = 0;
        if c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ")
            .is_err()
        {
            return sent;
        }
        let chunk = vec![b'a'; 64 << 10];
        while sent < 32 << 20 && !stop.load(Ordering::SeqCst) {
            match c.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        sent
    })
}

#[test]
fn metrics_and_healthz_answer_promptly_under_idle_slow_and_huge_clients() {
    let s = setup(9, &synthetic(50), "");
    let (root, cfg) = (s.root(), s.cfg.as_path());
    let mut d = Daemon::start(root, &["--config", p(cfg)]);
    let addr: SocketAddr = d.metrics_addr().parse().unwrap();
    wait_for(60, "decisions", || count_lines(root) >= 3);
    assert!(http_get(&addr.to_string(), "/healthz").starts_with("HTTP/1.1 200"));
    let pid = d.child.id();
    let base_kib = rss_kib(pid);
    assert!(base_kib > 0, "no VmRSS for {pid}");

    let stop = Arc::new(AtomicBool::new(false));
    let peak_kib = Arc::new(AtomicU64::new(base_kib));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_kib.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let big = big_header_client(addr, stop.clone());
    std::thread::sleep(Duration::from_millis(50));
    let slow = slow_client(addr, stop.clone());
    let t_idle = Instant::now();
    let idle: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok())
        .collect();

    // A scraper and a watchdog, once a second for 6 s (past the server's
    // header-read deadline, so that the idle connections are closed by then).
    // Each answer within 3 s: a server blocked by the slow client (a byte
    // every 200 ms for the whole test) or the huge header would not answer
    // at all; the margin over a scrape's usual milliseconds is for a CI
    // machine whose 2 cores run the other tests (RTSP encoding among them).
    let limit = Duration::from_secs(3);
    let mut answers = Vec::new();
    for round in 0..6 {
        let t = Instant::now();
        for path in ["/healthz", "/metrics"] {
            let (took, r) = timed_get(addr, path, limit);
            answers.push((round, path, took, r));
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }

    // The server hangs up on connections that never send a request: by now
    // every idle one is closed (read: EOF or reset, not a timeout).
    let mut still_open = 0;
    for mut c in idle.iter() {
        let _ = c.set_read_timeout(Some(Duration::from_millis(20)));
        let mut b = [0u8; 64];
        if let Err(e) = c.read(&mut b) {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                still_open += 1;
            }
        }
    }
    let idle_checked_after = t_idle.elapsed();

    stop.store(true, Ordering::SeqCst);
    let big_sent = big.join().unwrap();
    let slow_kept = slow.join().unwrap();
    sampler.join().unwrap();
    drop(idle);
    let grew_kib = peak_kib.load(Ordering::SeqCst).saturating_sub(base_kib);

    let report = answers
        .iter()
        .map(|(round, path, took, r)| {
            let r = match r {
                Ok(r) => r.lines().next().unwrap_or("(empty answer)").to_string(),
                Err(e) => format!("error: {e}"),
            };
            format!("round {round} {path}: {took:?}: {r}")
        })
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "{report}\nidle connections: {} opened, {still_open} still open after {idle_checked_after:?}\n\
         big header: {big_sent} bytes sent; slow client kept {slow_kept:?}\n\
         VmRSS: {base_kib} KiB before, grew by {grew_kib} KiB at most",
        150
    );
    for (round, path, took, r) in &answers {
        let ok = matches!(r, Ok(r) if r.starts_with("HTTP/1.1 200"));
        assert!(ok && *took < limit, "round {round} {path}:\n{report}");
    }
    assert!(
        grew_kib < 8 << 10,
        "the daemon grew by {grew_kib} KiB while a 32 MiB header was sent ({big_sent} bytes went out)"
    );
    assert!(
        slow_kept.is_some(),
        "a client sending a header byte every 200 ms was kept for the whole test"
    );
    assert_eq!(
        still_open, 0,
        "idle connections still open after {idle_checked_after:?}"
    );

    d.signal("TERM");
    let (st, _, err) = d.wait(60);
    assert!(st.success(), "{err}");
}
