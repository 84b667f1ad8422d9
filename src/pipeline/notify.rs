//! systemd's notification protocol (`sd_notify`): READY, STATUS, WATCHDOG,
//! RELOADING and STOPPING datagrams to `$NOTIFY_SOCKET`. Without that
//! variable (not under systemd, or `Type=` is not notify) it does nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// `$WATCHDOG_USEC` when the watchdog is for us.
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

fn notify_addr(path: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract sockets need Linux"));
        }
    }
    std::os::unix::net::SocketAddr::from_pathname(path)
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|p| {
            let addr = notify_addr(&p)
                .map_err(|e| tracing::warn!("NOTIFY_SOCKET={p}: {e}"))
                .ok()?;
            let s = UnixDatagram::unbound()
                .map_err(|e| tracing::warn!("cannot create the notify socket: {e}"))
                .ok()?;
            Some((s, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier {
            socket,
            watchdog,
            last_ping: Mutex::new(None),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Notifier {
            socket: None,
            watchdog: None,
            last_ping: Mutex::new(None),
        }
    }

    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (e.g. `READY=1`); errors are logged, not fatal.
    pub fn send(&self, state: &str) {
        if let Some((s, addr)) = &self.socket {
            if let Err(e) = s.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!("sd_notify {state:?}: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: draining the pipeline");
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        let mut ts = libc_monotonic_us();
        if ts == 0 {
            ts = 1;
        }
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={ts}"));
    }

    /// `WATCHDOG=1`, at most every half watchdog interval. Called from the
    /// inference loop, so a hung model stops the pings and systemd restarts us.
    pub fn watchdog(&self) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let mut last = self.last_ping.lock().expect("notify lock");
        let now = Instant::now();
        if last.is_none_or(|t| now - t >= interval / 2) {
            *last = Some(now);
            self.send("WATCHDOG=1");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds.
fn libc_monotonic_us() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        if rc == 0 {
            return ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                notify_addr(path.to_str().unwrap()).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(3600)),
            last_ping: Mutex::new(None),
        };
        n.ready("serving");
        n.watchdog();
        n.watchdog(); // rate-limited: not sent
        n.stopping();
        let mut got = Vec::new();
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        while let Ok(k) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..k]).into_owned());
        }
        assert_eq!(
            got,
            vec![
                "READY=1\nSTATUS=serving".to_string(),
                "WATCHDOG=1".into(),
                "STOPPING=1\nSTATUS=stopping: draining the pipeline".into()
            ]
        );
    }
}
