//! The daemon's HTTP endpoints: `/metrics` (Prometheus text) and `/healthz`.
//!
//! A watchdog or load balancer decides from `/healthz` whether the daemon
//! lives, so this server must answer it promptly whatever else is connected.
//! A hand-written one-connection-at-a-time server could not: a hundred idle
//! connections, or one client sending a header byte a second, kept it from
//! answering, and one long header line was held in memory whole.
//!
//! So it is axum's router served by hyper's HTTP/1 connection code, on tokio:
//! well-kept crates, with HTTP parsing that is not ours to get wrong, and an
//! async runtime on which an idle connection is a parked task (a few KiB, no
//! thread), so that waiting on slow clients costs nothing. The runtime is a
//! current-thread one on a thread of its own; the rest of the daemon stays
//! synchronous. Connections are served with hyper's `http1::Builder` directly
//! rather than `axum::serve`, which does not expose the limits below
//! ([`Limits`]; the production values are [`Limits::default`]):
//!
//! - **Connections**: at most 128 at once. When a new one arrives at the
//!   limit, the oldest connection that has not yet delivered a request head is
//!   closed to make room: idle and slow clients cannot lock out a scraper,
//!   whose request follows its connect at once. Only when all 128 are busy
//!   with requests is the newcomer closed at once. Either way every connection
//!   is accepted, so the listen backlog never fills.
//! - **Header read timeout**: 5 s from the connection's start (hyper arms it on
//!   the first poll, before any byte arrives, so it covers a client that never
//!   sends anything as well as one that sends a byte a second).
//! - **Connection deadline**: 10 s for a whole connection, however it is spent
//!   (a client that never reads its answer, too).
//! - **Header size**: 16 KiB, hyper's read buffer limit; a larger head gets
//!   431 and the connection is closed, so no client makes the daemon hold more.
//! - **One request per connection** (no keep-alive): a scrape is one request.
//!
//! Any other app (a review page, say) can be served the same way with its own
//! router: [`serve_router`].

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::error::{Error, Result};

/// What one client may cost the server; see the module docs for why.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; past it, the oldest one still waiting
    /// for its request head is closed (or the newcomer, if none is).
    pub max_connections: usize,
    /// From the connection's start to its complete request head.
    pub header_read_timeout: Duration,
    /// From the connection's start to its end, whatever it does.
    pub connection_deadline: Duration,
    /// The largest request head (hyper's read buffer; at least 8 KiB).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 128,
            header_read_timeout: Duration::from_secs(5),
            connection_deadline: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
        }
    }
}

/// How long [`Server::shutdown`] lets requests in progress finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A running server; [`Server::shutdown`] (or dropping it) stops it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Stops accepting, closes idle connections, lets requests in progress
    /// finish (up to a second) and joins the server's thread.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `listen` and serves `/metrics` and `/healthz` until
/// [`Server::shutdown`]. `/healthz` fails (503) when the inference loop has
/// not turned for `healthy_within`, or when the daemon is degraded.
pub fn serve(listen: &str, metrics: Arc<Metrics>, healthy_within: Duration) -> Result<Server> {
    let listener = TcpListener::bind(listen).map_err(|e| {
        Error::Unavailable(format!("metrics.listen: cannot listen on {listen}: {e}"))
    })?;
    serve_router(
        listener,
        metrics_router(metrics, healthy_within),
        Limits::default(),
    )
    .map_err(|e| Error::Runtime(format!("metrics.listen: {e}")))
}

/// Serves `router` on `listener` within `limits`, on a thread of its own,
/// until [`Server::shutdown`].
pub fn serve_router(listener: TcpListener, router: Router, limits: Limits) -> Result<Server> {
    let fail = |what: &str, e: std::io::Error| Error::Runtime(format!("http server: {what}: {e}"));
    let addr = listener.local_addr().map_err(|e| fail("address", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail("non-blocking socket", e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| fail("runtime", e))?;
    let listener = {
        let _in_runtime = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|e| fail("listener", e))?
    };
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(format!("http-{}", addr.port()))
        .spawn(move || runtime.block_on(accept_loop(listener, router, limits, stopped)))
        .map_err(|e| fail("thread", e))?;
    Ok(Server {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// A connection being served.
struct Conn {
    /// Set once its request head has arrived: from then on it is not evicted.
    busy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    mut stop: oneshot::Receiver<()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8 << 10))
        .keep_alive(false);
    // Oldest first.
    let mut conns: VecDeque<Conn> = VecDeque::new();
    let mut failing = false;
    loop {
        let accepted = poll_fn(|cx| {
            if Pin::new(&mut stop).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let (stream, peer) = match accepted {
            None => break,
            Some(Ok(accepted)) => {
                failing = false;
                accepted
            }
            Some(Err(e)) => {
                // Out of file descriptors, say: retry soon, without spinning
                // or filling the log.
                if !failing {
                    tracing::warn!("http: accept failed: {e}");
                }
                failing = true;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        conns.retain(|c| !c.task.is_finished());
        if conns.len() >= limits.max_connections {
            match conns.iter().position(|c| !c.busy.load(Ordering::SeqCst)) {
                Some(oldest_idle) => {
                    if let Some(c) = conns.remove(oldest_idle) {
                        c.task.abort();
                    }
                }
                None => {
                    tracing::debug!("http: {peer}: {} connections busy", conns.len());
                    drop(stream);
                    continue;
                }
            }
        }
        let busy = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(connection(
            stream,
            peer,
            http.clone(),
            router.clone(),
            busy.clone(),
            limits.connection_deadline,
        ));
        conns.push_back(Conn { busy, task });
    }
    // Shutting down: close the idle connections, give the busy ones a moment.
    let grace = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for c in conns {
        if c.busy.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout_at(grace, c.task).await;
        } else {
            c.task.abort();
        }
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    http: http1::Builder,
    router: Router,
    busy: Arc<AtomicBool>,
    deadline: Duration,
) {
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |request| {
        busy.store(true, Ordering::SeqCst);
        hyper::service::Service::call(&router, request)
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(deadline, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("http: {peer}: {e}"),
        Err(_) => tracing::debug!("http: {peer}: closed after {deadline:?}"),
    }
}

/// What the metrics handlers read.
#[derive(Clone)]
struct App {
    metrics: Arc<Metrics>,
    healthy_within: Duration,
}

/// `/metrics` and `/healthz` (GET and HEAD); 405 for other methods, 404 for
/// other paths.
fn metrics_router(metrics: Arc<Metrics>, healthy_within: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n")
        })
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(App {
            metrics,
            healthy_within,
        })
}

async fn metrics_page(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(app): State<App>) -> (StatusCode, String) {
    let since = app.metrics.since_tick();
    if since > app.healthy_within {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("inference loop stalled for {} ms\n", since.as_millis()),
        )
    } else if let Some(reason) = app.metrics.degraded() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", reason.trim_end()),
        )
    } else {
        (StatusCode::OK, "ok\n".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// Sends `raw` and returns whatever comes back before the server closes
    /// (lossy UTF-8). A server that hangs up mid-request is not an error here:
    /// what it had answered by then is returned.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(raw);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    /// The body of a response (after the blank line).
    fn body(r: &str) -> &str {
        r.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// `m`, its inference loop just turned, served on a free loopback port;
    /// healthy for a minute.
    fn serve_ticked(m: &Arc<Metrics>) -> Server {
        m.tick();
        serve("127.0.0.1:0", m.clone(), Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn serves_metrics_and_health_on_loopback() {
        let m = Arc::new(Metrics::new());
        m.frames_captured.add(7);
        let s = serve_ticked(&m);
        let r = get(s.addr, "/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{r}"
        );
        assert!(r.contains("gcm_frames_captured_total 7\n"), "{r}");
        let h = get(s.addr, "/healthz");
        assert!(
            h.starts_with("HTTP/1.1 200 OK") && body(&h) == "ok\n",
            "{h}"
        );
        assert!(get(s.addr, "/metrics?x=1").starts_with("HTTP/1.1 200 OK"));
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
                assert!(body(&h).starts_with("inference loop stalled for "), "{h}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{h}");
            std::thread::sleep(Duration::from_millis(5));
        }
        s.shutdown();
    }

    #[test]
    fn healthz_reports_a_degraded_daemon_with_its_reason() {
        let m = Arc::new(Metrics::new());
        let s = serve_ticked(&m);
        m.set_degraded(Some("decision log: cannot write: disk full".into()));
        let h = get(s.addr, "/healthz");
        assert!(h.starts_with("HTTP/1.1 503"), "{h}");
        assert!(
            body(&h).contains("decision log: cannot write: disk full"),
            "{h}"
        );
        m.set_degraded(None);
        let h = get(s.addr, "/healthz");
        assert!(
            h.starts_with("HTTP/1.1 200 OK") && body(&h) == "ok\n",
            "{h}"
        );
        s.shutdown();
    }

    #[test]
    fn only_get_and_head_are_served_and_unknown_paths_are_404() {
        let s = serve_ticked(&Arc::new(Metrics::new()));
        let h = exchange(s.addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            h.starts_with("HTTP/1.1 200 OK") && body(&h).is_empty(),
            "{h}"
        );
        for method in ["POST", "PUT", "DELETE"] {
            let r = exchange(
                s.addr,
                format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            );
            assert!(r.starts_with("HTTP/1.1 405"), "{method}: {r}");
            // RFC 9110: a 405 says which methods are allowed.
            let allow = r
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("allow:")
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| panic!("{method}: no Allow header: {r}"));
            assert!(allow.contains("get"), "{r}");
        }
        assert!(get(s.addr, "/nope").starts_with("HTTP/1.1 404"));
        assert!(get(s.addr, "/").starts_with("HTTP/1.1 404"));
        s.shutdown();
    }

    #[test]
    fn an_oversized_header_is_refused_not_buffered() {
        let s = serve_ticked(&Arc::new(Metrics::new()));
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.resize(req.len() + (1 << 20), b'a');
        req.extend_from_slice(b"\r\n\r\n");
        let r = exchange(s.addr, &req);
        // 431, or a hang-up that lost it (the server closes with our bytes
        // unread): either way the 1 MiB header was not taken in.
        assert!(
            r.is_empty() || r.starts_with("HTTP/1.1 431"),
            "{}",
            &r[..r.len().min(200)]
        );
        // And the server is still there.
        assert!(get(s.addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        s.shutdown();
    }
}

/// The limits themselves, on a test router with small ones.
#[cfg(test)]
mod limit_tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// `/` answers at once, `/slow` after 2 s.
    fn start(limits: Limits) -> Server {
        let router = Router::new().route("/", get(|| async { "hi\n" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "late\n"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        serve_router(listener, router, limits).unwrap()
    }

    fn small() -> Limits {
        Limits {
            max_connections: 3,
            header_read_timeout: Duration::from_millis(300),
            connection_deadline: Duration::from_millis(800),
            max_header_bytes: 8 << 10,
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// [`small`] limits but for the timeouts, which no test here meets.
    fn without_timeouts() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            connection_deadline: Duration::from_secs(30),
            ..small()
        }
    }

    /// A server with [`small`] limits and a connection to it, opened now.
    fn start_and_connect() -> (Server, TcpStream, Instant) {
        let s = start(small());
        let t0 = Instant::now();
        let c = connect(s.addr);
        (s, c, t0)
    }

    /// Reads until the server closes; what came, and when.
    fn until_closed(c: &mut TcpStream, t0: Instant) -> (String, Duration) {
        let mut out = Vec::new();
        match c.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("not closed: {e}"),
        }
        (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
    }

    fn fetch(addr: SocketAddr, path: &str) -> String {
        let mut c = connect(addr);
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        until_closed(&mut c, Instant::now()).0
    }

    #[test]
    fn a_connection_that_never_sends_is_closed_after_the_header_timeout() {
        let (s, mut c, t0) = start_and_connect();
        let (got, after) = until_closed(&mut c, t0);
        assert!(got.is_empty(), "{got}");
        assert!(after >= Duration::from_millis(250), "{after:?}");
        assert!(after < Duration::from_millis(750), "{after:?}");
        s.shutdown();
    }

    #[test]
    fn a_header_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
        let (s, mut c, t0) = start_and_connect();
        c.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
        let mut cut = None;
        while t0.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(30));
            if c.write_all(b"a").is_err() {
                cut = Some(t0.elapsed());
                break;
            }
        }
        let cut = cut.expect("the slow client was kept for 3 s");
        assert!(cut < Duration::from_millis(800), "{cut:?}");
        s.shutdown();
    }

    #[test]
    fn at_the_connection_limit_the_oldest_idle_connection_makes_room() {
        let s = start(without_timeouts());
        let t0 = Instant::now();
        let mut idle: Vec<TcpStream> = (0..10).map(|_| connect(s.addr)).collect();
        // Each request is served although 10 idle connections came first.
        for _ in 0..3 {
            let r = fetch(s.addr, "/");
            assert!(
                r.starts_with("HTTP/1.1 200 OK") && r.ends_with("hi\n"),
                "{r}"
            );
        }
        // The oldest idle ones were closed to make room, long before any
        // timeout; the newest are still open.
        let (got, after) = until_closed(&mut idle[0], t0);
        assert!(
            got.is_empty() && after < Duration::from_secs(2),
            "{after:?}"
        );
        idle.last_mut()
            .unwrap()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let e = idle.last_mut().unwrap().read(&mut [0u8; 8]).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        );
        s.shutdown();
    }

    #[test]
    fn when_every_connection_is_busy_a_newcomer_is_closed_at_once() {
        let s = start(Limits {
            connection_deadline: Duration::from_secs(30),
            ..small()
        });
        let mut busy: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut c = connect(s.addr);
                write!(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        let mut c = connect(s.addr);
        let _ = write!(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let (got, after) = until_closed(&mut c, t0);
        assert!(got.is_empty(), "{got}");
        assert!(after < Duration::from_millis(500), "{after:?}");
        // The busy ones are answered.
        for c in &mut busy {
            let (got, _) = until_closed(c, t0);
            assert!(
                got.starts_with("HTTP/1.1 200 OK") && got.ends_with("late\n"),
                "{got}"
            );
        }
        s.shutdown();
    }

    #[test]
    fn a_connection_is_closed_at_its_deadline_whatever_it_waits_for() {
        let (s, mut c, t0) = start_and_connect();
        write!(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (got, after) = until_closed(&mut c, t0);
        assert!(got.is_empty(), "{got}");
        assert!(after < Duration::from_millis(1500), "{after:?}");
        s.shutdown();
    }

    #[test]
    fn shutdown_is_prompt_with_idle_connections_open() {
        let s = start(without_timeouts());
        let mut idle: Vec<TcpStream> = (0..3).map(|_| connect(s.addr)).collect();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        s.shutdown();
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        for c in &mut idle {
            let (got, _) = until_closed(c, t0);
            assert!(got.is_empty(), "{got}");
        }
    }
}
