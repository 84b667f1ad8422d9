//! The `outputs:` section of the daemon config: where decisions go besides
//! the decision log. Each entry names one kind (`mqtt`, `webhook` or
//! `modbus`) with its settings, and the settings every output has.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::verdict::Verdict;

/// One output: exactly one of `mqtt`, `webhook`, `modbus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The output's name in metrics (`output="..."`) and messages. Default:
    /// its kind, with its place in the list when a kind repeats (`mqtt-2`).
    #[serde(default)]
    pub name: Option<String>,
    /// The verdicts this output gets (default: all three).
    #[serde(default = "OutputSpec::all_verdicts")]
    pub verdicts: Vec<Verdict>,
    /// Decisions waiting for this output. When it is full (the receiver is
    /// slow or gone) new decisions are dropped for this output and counted
    /// (`gcm_output_dropped_total`); inference never waits for an output.
    #[serde(default = "OutputSpec::default_queue")]
    pub queue_capacity: usize,
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    #[serde(default)]
    pub modbus: Option<ModbusConfig>,
}

/// An MQTT broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://HOST[:PORT]` (plain TCP, port 1883) or `mqtts://HOST[:PORT]`
    /// (TLS, port 8883).
    pub url: String,
    /// `mqtts`: the CA certificates (PEM) the broker's certificate must
    /// chain to. Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `mqtts` with client certificates: this client's certificate chain
    /// and private key (PEM), both or neither.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Default: `gcm-inspect-{station}-{output name}`. Unique per broker:
    /// a second client with the same id takes the session over.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic template: `{station}`, `{verdict}` and `{class}` are replaced.
    #[serde(default = "MqttConfig::default_topic")]
    pub topic: String,
    /// 0 (at most once) or 1 (at least once, the broker acknowledges).
    #[serde(default = "MqttConfig::default_qos")]
    pub qos: u8,
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (first line), readable by the daemon only.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The longest wait between reconnect attempts (they start at 100 ms and double).
    #[serde(default = "MqttConfig::default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

/// An HTTP endpoint that takes a POST per decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://HOST[:PORT]/PATH` or `https://...` (TLS).
    pub url: String,
    /// `https`: the CA certificates (PEM) the server's certificate must
    /// chain to. Default: the Mozilla roots built into the binary.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For one attempt: connect, send, and the response.
    #[serde(default = "WebhookConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per decision (1: no retry); waits between them start at
    /// 100 ms and double.
    #[serde(default = "WebhookConfig::default_attempts")]
    pub attempts: u32,
    /// A file holding a bearer token (first line), sent as `Authorization: Bearer ...`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
}

/// A Modbus TCP server (a PLC): coils and holding registers written per decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// `HOST:PORT` (PLCs listen on 502).
    pub address: String,
    /// The Modbus unit (slave) id.
    #[serde(default = "ModbusConfig::default_unit")]
    pub unit_id: u8,
    /// A coil per verdict: each decision sets its verdict's coil and clears the others.
    #[serde(default)]
    pub coils: VerdictCoils,
    /// A holding register incremented (mod 65536) with every decision
    /// written, after the coils: the PLC's strobe for "a new decision".
    #[serde(default)]
    pub counter_register: Option<u16>,
    /// A holding register given the decided class's index.
    #[serde(default)]
    pub class_register: Option<u16>,
    /// For one connect or write.
    #[serde(default = "ModbusConfig::default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Coil addresses by verdict; a verdict without one writes no coil.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictCoils {
    pub ok: Option<u16>,
    pub ng: Option<u16>,
    pub review: Option<u16>,
}

/// A value check: `Err((key, what is wrong))`, as in [`crate::config`].
pub type Checked = std::result::Result<(), (String, String)>;

impl OutputSpec {
    fn all_verdicts() -> Vec<Verdict> {
        Verdict::ALL.to_vec()
    }
    fn default_queue() -> usize {
        1024
    }

    /// The kind's key: `mqtt`, `webhook` or `modbus` (the first set).
    pub fn kind(&self) -> &'static str {
        match (&self.mqtt, &self.webhook, &self.modbus) {
            (Some(_), _, _) => "mqtt",
            (_, Some(_), _) => "webhook",
            _ => "modbus",
        }
    }

    /// Checks the entry at `outputs[i]`; keys in errors are full paths.
    pub fn check(&self, i: usize) -> Checked {
        let key = |k: &str| format!("outputs[{i}].{k}");
        let kinds = [
            self.mqtt.is_some(),
            self.webhook.is_some(),
            self.modbus.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err((
                format!("outputs[{i}]"),
                "needs exactly one of mqtt, webhook, modbus".into(),
            ));
        }
        if self.verdicts.is_empty() {
            return Err((
                key("verdicts"),
                "is empty: the output would get nothing".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return Err((
                key("queue_capacity"),
                "must be between 1 and 1000000".into(),
            ));
        }
        if let Some(n) = &self.name {
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err((key("name"), format!("{n:?}: use letters, digits, - _ .")));
            }
        }
        match (&self.mqtt, &self.webhook, &self.modbus) {
            (Some(m), _, _) => m.check(&key("mqtt")),
            (_, Some(w), _) => w.check(&key("webhook")),
            (_, _, Some(m)) => m.check(&key("modbus")),
            _ => Ok(()),
        }
    }

    /// The host the output connects to, for the check of the unit's network policy.
    pub fn host(&self) -> Option<String> {
        match (&self.mqtt, &self.webhook, &self.modbus) {
            (Some(m), _, _) => split_url(&m.url, m.scheme()).ok().map(|(h, _, _)| h),
            (_, Some(w), _) => split_url(&w.url, "http://")
                .or_else(|_| split_url(&w.url, "https://"))
                .ok()
                .map(|(h, _, _)| h),
            (_, _, Some(m)) => m.address.rsplit_once(':').map(|(h, _)| h.to_string()),
            _ => None,
        }
    }
}

/// Splits `SCHEME://HOST[:PORT][/PATH]` into host, port (if given) and path.
pub fn split_url(url: &str, scheme: &str) -> Result<(String, Option<u16>, String), String> {
    let rest = url
        .strip_prefix(scheme)
        .ok_or_else(|| format!("{url:?} must start with {scheme}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{url:?}: {p:?} is not a port"))?;
            (h, Some(port))
        }
        _ => (authority, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok((host.to_string(), port, path.to_string()))
}

fn wait(key: &str, ms: u64) -> Checked {
    if !(1..=3_600_000).contains(&ms) {
        return Err((key.into(), format!("{ms} must be between 1 and 3600000 ms")));
    }
    Ok(())
}

impl MqttConfig {
    /// TLS: an `mqtts://` URL.
    pub fn tls(&self) -> bool {
        self.url.starts_with("mqtts://")
    }

    /// The URL's scheme, with its `://`.
    pub fn scheme(&self) -> &'static str {
        if self.tls() {
            "mqtts://"
        } else {
            "mqtt://"
        }
    }

    fn default_topic() -> String {
        "gcm/{station}/decision".into()
    }
    fn default_qos() -> u8 {
        1
    }
    fn default_reconnect_max_ms() -> u64 {
        5000
    }

    fn check(&self, key: &str) -> Checked {
        let k = |s: &str| format!("{key}.{s}");
        split_url(&self.url, self.scheme())
            .map_err(|m| (k("url"), m.replace("mqtt://", "mqtt:// or mqtts://")))?;
        let tls_files = [&self.ca_file, &self.client_cert_file, &self.client_key_file];
        if !self.tls() && tls_files.iter().any(|f| f.is_some()) {
            return Err((k("url"), "certificate files need an mqtts:// URL".into()));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err((
                k("client_key_file"),
                "client_cert_file and client_key_file go together".into(),
            ));
        }
        if self.qos > 1 {
            return Err((k("qos"), format!("{}: must be 0 or 1", self.qos)));
        }
        let mut rest = self.topic.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c);
            let name = close.map(|c| &rest[open + 1..c]);
            match name {
                Some("station" | "verdict" | "class") => rest = &rest[close.unwrap() + 1..],
                _ => {
                    return Err((
                        k("topic"),
                        format!(
                            "{:?}: placeholders are {{station}}, {{verdict}}, {{class}}",
                            self.topic
                        ),
                    ))
                }
            }
        }
        if self.topic.is_empty() || self.topic.contains(['#', '+']) {
            return Err((k("topic"), "must be a topic name (no wildcards)".into()));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err((k("password_file"), "needs a username".into()));
        }
        wait(&k("reconnect_max_ms"), self.reconnect_max_ms)
    }
}

impl WebhookConfig {
    fn default_timeout_ms() -> u64 {
        2000
    }
    fn default_attempts() -> u32 {
        3
    }

    fn check(&self, key: &str) -> Checked {
        let k = |s: &str| format!("{key}.{s}");
        let scheme = if self.url.starts_with("https://") {
            "https://"
        } else {
            "http://"
        };
        split_url(&self.url, scheme)
            .map_err(|m| (k("url"), m.replace("http://", "http:// or https://")))?;
        if self.ca_file.is_some() && scheme == "http://" {
            return Err((k("ca_file"), "needs an https:// URL".into()));
        }
        if !(1..=10).contains(&self.attempts) {
            return Err((
                k("attempts"),
                format!("{}: must be between 1 and 10", self.attempts),
            ));
        }
        wait(&k("timeout_ms"), self.timeout_ms)
    }
}

impl ModbusConfig {
    fn default_unit() -> u8 {
        1
    }
    fn default_timeout_ms() -> u64 {
        1000
    }

    fn check(&self, key: &str) -> Checked {
        let k = |s: &str| format!("{key}.{s}");
        let port = self.address.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err((k("address"), format!("{:?}: want HOST:PORT", self.address)));
        }
        let c = &self.coils;
        if c.ok.is_none() && c.ng.is_none() && c.review.is_none() && self.counter_register.is_none()
        {
            return Err((
                k("coils"),
                "name at least one coil (ok, ng, review) or a counter_register".into(),
            ));
        }
        wait(&k("timeout_ms"), self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let s = |u| split_url(u, "http://");
        assert_eq!(
            s("http://127.0.0.1:8080/hook"),
            Ok(("127.0.0.1".into(), Some(8080), "/hook".into()))
        );
        assert_eq!(
            s("http://plc.local"),
            Ok(("plc.local".into(), None, "".into()))
        );
        assert_eq!(
            s("http://[::1]:80/"),
            Ok(("::1".into(), Some(80), "/".into()))
        );
        assert!(s("https://x/")
            .unwrap_err()
            .contains("must start with http://"));
        assert!(s("http://x:99999/").unwrap_err().contains("not a port"));
        assert!(s("http://:80/").unwrap_err().contains("no host"));
    }
}
