//! HTTP webhook output (ureq): a POST of the JSON payload per decision,
//! with a timeout per attempt and retries after 100 ms, 200 ms, ... A
//! decision that fails every attempt is counted as a failure and left (the
//! decision log has it). Plain HTTP: lines put a TLS-terminating proxy in
//! front when the receiver is not on the box. Proxy variables in the
//! environment are ignored: the URL is where the POST goes.

use std::time::Duration;

use super::config::WebhookConfig;
use super::{secret, Backoff, Deliver, Message};
use crate::error::Result;

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
        let agent = ureq::Agent::config_builder()
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
