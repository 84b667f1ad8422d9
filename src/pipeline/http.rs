//! A tiny HTTP/1.1 server on `std::net` for `/metrics` (Prometheus text) and
//! `/healthz`. One connection at a time; it is polled by a scraper, not a crowd.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::metrics::Metrics;
use crate::error::{Error, Result};

pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `listen` and serves until [`Server::shutdown`].
pub fn serve(listen: &str, metrics: Arc<Metrics>, healthy_within: Duration) -> Result<Server> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| Error::Runtime(format!("metrics.listen: cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Runtime(format!("metrics.listen: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Runtime(format!("metrics.listen: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Err(e) = handle(conn, &metrics, healthy_within) {
                            tracing::debug!("metrics connection: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    Err(e) => {
                        tracing::warn!("metrics: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(|e| Error::Runtime(format!("cannot start the metrics thread: {e}")))?;
    Ok(Server {
        addr,
        stop,
        thread: Some(thread),
    })
}

impl Server {
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(conn: TcpStream, metrics: &Metrics, healthy_within: Duration) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Read (and ignore) the headers up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => {
            let since = metrics.since_tick();
            if let (true, Some(reason)) = (since <= healthy_within, metrics.degraded()) {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("{reason}\n"),
                )
            } else if since <= healthy_within {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("inference loop stalled for {} ms\n", since.as_millis()),
                )
            }
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn serves_metrics_and_health_on_loopback() {
        let m = Arc::new(Metrics::new());
        m.frames_captured.add(7);
        m.tick();
        let s = serve("127.0.0.1:0", m.clone(), Duration::from_secs(60)).unwrap();
        let r = get(s.addr, "/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("gcm_frames_captured_total 7\n"), "{r}");
        let h = get(s.addr, "/healthz");
        assert!(
            h.starts_with("HTTP/1.1 200 OK") && h.ends_with("ok\n"),
            "{h}"
        );
        assert!(get(s.addr, "/nope").starts_with("HTTP/1.1 404"));
        s.shutdown();
    }

    #[test]
    fn healthz_fails_when_inference_stalls() {
        let m = Arc::new(Metrics::new());
        // Never ticked, and the allowance is zero: any elapsed time is a stall.
        let s = serve("127.0.0.1:0", m, Duration::ZERO).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let h = get(s.addr, "/healthz");
            if h.starts_with("HTTP/1.1 503") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{h}");
            std::thread::sleep(Duration::from_millis(5));
        }
        s.shutdown();
    }
}
