//! MQTT output (rumqttc's blocking client). Two threads: the output's own
//! thread publishes into rumqttc's request queue; a connection thread
//! drives the connection, reconnects with a capped backoff and counts what
//! reached the broker (QoS 1: acknowledged by it; QoS 0: written to the
//! socket) and the connection failures.
//!
//! While the broker is away, rumqttc's small request queue fills, the
//! output's thread waits on it, the output's queue fills, and further
//! decisions are dropped for this output (counted). Messages published in
//! a session the broker did not keep are not sent again: the decision log
//! is the record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, MqttOptions, Outgoing, Packet, QoS, Transport};

use super::config::{split_url, MqttConfig};
use super::{pem, secret, wait_until, Backoff, Deliver, FailureRun, Message};
use crate::error::{Error, Result};
use crate::pipeline::metrics::Metrics;

/// rumqttc's request queue: small, so that what waits, waits in the output's
/// own (counted) queue.
const REQUESTS: usize = 16;

pub struct Mqtt {
    client: Client,
    topic: String,
    station: String,
    qos: QoS,
    closing: Arc<AtomicBool>,
    /// Messages handed to rumqttc, and those the broker has (see [`Driver`]).
    handed: u64,
    arrived: Arc<AtomicU64>,
    connection: Option<JoinHandle<()>>,
}

/// `topic` with `{station}` filled in (`{verdict}` and `{class}` vary per message).
pub fn topic_example(topic: &str, station: &str) -> String {
    topic.replace("{station}", station)
}

/// TLS with the configured CA (or the system's roots) and client certificate.
fn transport(c: &MqttConfig) -> Result<Transport> {
    // One crypto provider is built in (ring); rustls takes it as the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(ca) = &c.ca_file else {
        return Ok(Transport::tls_with_default_config());
    };
    let client_auth = match (&c.client_cert_file, &c.client_key_file) {
        (Some(cert), Some(key)) => Some((pem(cert)?, pem(key)?)),
        _ => None,
    };
    Ok(Transport::tls(pem(ca)?, client_auth, None))
}

impl Mqtt {
    /// Starts the connection thread; connecting happens there (a broker that
    /// is down at start is retried like one that goes away).
    pub fn connect(
        c: &MqttConfig,
        name: &str,
        station: &str,
        metrics: &Arc<Metrics>,
    ) -> Result<Mqtt> {
        let bad = |m: String| Error::Runtime(format!("output {name}: {m}"));
        let (host, port, _) = split_url(&c.url, c.scheme()).map_err(bad)?;
        let id = c
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gcm-inspect-{station}-{name}"));
        let default_port = if c.tls() { 8883 } else { 1883 };
        let mut o = MqttOptions::new(id, host, port.unwrap_or(default_port));
        if c.tls() {
            o.set_transport(transport(c)?);
        }
        o.set_keep_alive(Duration::from_secs(10));
        o.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(user) = &c.username {
            let password = match &c.password_file {
                Some(f) => secret(f, "MQTT password")?,
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        let (client, connection) = Client::new(o, REQUESTS);
        let qos = match c.qos {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let closing = Arc::new(AtomicBool::new(false));
        let arrived = Arc::new(AtomicU64::new(0));
        let driver = Driver {
            arrived: arrived.clone(),
            name: name.to_string(),
            url: c.url.clone(),
            qos,
            metrics: metrics.clone(),
            closing: closing.clone(),
            backoff: Backoff::new(Duration::from_millis(c.reconnect_max_ms)),
        };
        let connection = std::thread::Builder::new()
            .name(format!("mqtt-{name}"))
            .spawn(move || driver.run(connection))
            .map_err(|e| bad(format!("cannot start the connection thread: {e}")))?;
        Ok(Mqtt {
            client,
            topic: c.topic.clone(),
            station: station.to_string(),
            qos,
            closing,
            handed: 0,
            arrived,
            connection: Some(connection),
        })
    }

    fn topic(&self, m: &Message) -> String {
        topic_example(&self.topic, &self.station)
            .replace("{verdict}", m.verdict.name())
            .replace("{class}", &m.class)
    }
}

impl Deliver for Mqtt {
    /// Hands the message to rumqttc; the connection thread counts it once
    /// the broker has it.
    fn deliver(&mut self, m: &Message) -> std::result::Result<bool, String> {
        self.client
            .publish(self.topic(m), self.qos, false, m.json.clone())
            .map_err(|e| format!("publish: {e}"))?;
        self.handed += 1;
        Ok(false)
    }

    /// Waits for the broker to have what was handed over, disconnects, and
    /// waits for the connection thread.
    fn finish(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        wait_until(deadline, || {
            self.arrived.load(Ordering::SeqCst) >= self.handed
        });
        let _ = self.client.disconnect();
        if let Some(h) = self.connection.take() {
            let ended = wait_until(deadline, || h.is_finished());
            self.closing.store(true, Ordering::SeqCst);
            if ended {
                let _ = h.join();
            }
        }
    }
}

/// The connection thread.
struct Driver {
    /// Messages the broker has (QoS 1: acknowledged; QoS 0: written).
    arrived: Arc<AtomicU64>,
    name: String,
    url: String,
    qos: QoS,
    metrics: Arc<Metrics>,
    closing: Arc<AtomicBool>,
    backoff: Backoff,
}

impl Driver {
    fn arrived(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.metrics.output_sent(&self.name);
    }

    fn run(mut self, mut connection: Connection) {
        let mut failing = FailureRun::default();
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    self.backoff.reset();
                    match failing.recover() {
                        Some((n, took)) => tracing::info!(
                            output = self.name,
                            "MQTT broker {} reachable again after {n} failed attempts in {:.1} s",
                            self.url,
                            took.as_secs_f64()
                        ),
                        None => {
                            tracing::info!(output = self.name, "MQTT connected to {}", self.url)
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) if self.qos == QoS::AtLeastOnce => {
                    self.arrived()
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) if self.qos == QoS::AtMostOnce => {
                    self.arrived()
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    if self.closing.load(Ordering::SeqCst) {
                        break;
                    }
                    self.metrics.output_failed(&self.name);
                    if failing.fail() {
                        tracing::warn!(
                            output = self.name,
                            "MQTT broker {}: {e}; retrying with backoff",
                            self.url
                        );
                    }
                    std::thread::sleep(self.backoff.step());
                }
            }
        }
    }
}
