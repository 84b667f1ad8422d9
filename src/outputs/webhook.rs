//! HTTP webhook output (ureq): a POST of the JSON payload per decision,
//! with a timeout per attempt and retries after 100 ms, 200 ms, ... A
//! decision that fails every attempt is counted as a failure and left (the
//! decision log has it). `https://` URLs are checked against `ca_file` or
//! the Mozilla roots built in (rustls with ring). Proxy variables in the
//! environment are ignored: the URL is where the POST goes.

use std::time::Duration;

use std::sync::Arc;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::config::WebhookConfig;
use super::{secret, Backoff, Deliver, Message};
use crate::error::{Error, Result};

pub struct Webhook {
    agent: ureq::Agent,
    url: String,
    attempts: u32,
    authorization: Option<String>,
}

impl Webhook {
    pub fn new(c: &WebhookConfig, _name: &str) -> Result<Webhook> {
        let authorization = match &c.bearer_token_file {
            Some(f) => Some(format!("Bearer {}", secret(f, "webhook bearer token")?)),
            None => None,
        };
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &c.ca_file {
            tls = tls.root_certs(RootCerts::Specific(Arc::new(ca_certificates(ca)?)));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(Duration::from_millis(c.timeout_ms)))
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("gcm-inspect/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Webhook {
            agent,
            url: c.url.clone(),
            attempts: c.attempts,
            authorization,
        })
    }

    fn post(&self, m: &Message) -> std::result::Result<(), String> {
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        req.send(&m.json[..]).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The certificates of a PEM file; none, or one that cannot be read, is a
/// configuration error naming the file.
pub fn ca_certificates(path: &std::path::Path) -> Result<Vec<Certificate<'static>>> {
    let bad = |m: String| Error::config(path, m);
    let pem = super::pem(path)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| bad(format!("not a PEM file: {e}")))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(certs)
}

impl Deliver for Webhook {
    fn deliver(&mut self, m: &Message) -> std::result::Result<bool, String> {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match self.post(m) {
                Ok(()) => return Ok(true),
                Err(e) => last = e,
            }
            if attempt < self.attempts {
                std::thread::sleep(backoff.step());
            }
        }
        Err(format!(
            "POST {} failed {} time(s), last: {last}",
            self.url, self.attempts
        ))
    }
}
