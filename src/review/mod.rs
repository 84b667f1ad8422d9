//! The review page (`gcm-inspect review`): the decision log and its evidence
//! in a browser, and the reviewers' labels.
//!
//! * [`index`]: the decision log in memory (read-only; appended lines are
//!   picked up on each request), filters, pages and the summary's counts.
//! * [`labels`]: `labels.jsonl`, the reviewers' acts, appended with the
//!   decision log's crash-safety rules.
//! * [`auth`]: access tokens, the Host check and the CSRF token.
//! * [`web`]: the HTTP endpoints and the embedded page, served by the
//!   daemon's own HTTP stack ([`crate::pipeline::http::serve_router`]: hyper
//!   with bounded heads, header timeouts and a connection limit).
//!
//! Only evidence files are served from disk: a file named by its frame's
//! `evidence.json`, inside the evidence folder (`--evidence`, else the
//! folder holding the log line's evidence folder) once symlinks are
//! resolved; anything else is 404.

pub mod auth;
pub mod index;
pub mod labels;
pub mod web;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::evidence::{EvidenceRecord, EVIDENCE_JSON};
use crate::pipeline::http::{serve_router, Limits, Server};

/// The evidence formats the page reads.
pub const EVIDENCE_FORMATS: [&str; 2] = ["gcm-inspect-evidence/1", "gcm-inspect-evidence/2"];

/// What `gcm-inspect review` was given.
#[derive(Clone, Debug)]
pub struct Options {
    pub log_dir: PathBuf,
    /// Where the evidence folders are, when not where the log says.
    pub evidence_dir: Option<PathBuf>,
    pub bind: String,
    /// Where `labels.jsonl` goes (default: the log folder).
    pub labels_dir: Option<PathBuf>,
    pub reviewer: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// A running review page; dropping it stops the server.
pub struct Review {
    pub server: Server,
    pub labels: PathBuf,
    /// Tokens are required (any access needs one).
    pub tokens: bool,
}

impl Review {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// Whether every address `bind` resolves to is a loopback one.
fn is_loopback(bind: &str) -> Result<bool> {
    let addrs: Vec<SocketAddr> = bind
        .to_socket_addrs()
        .map_err(|e| Error::Usage(format!("--bind {bind}: {e}")))?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

/// Checks the options, reads the log and labels, binds and serves.
pub fn start(o: Options) -> Result<Review> {
    let loopback = is_loopback(&o.bind)?;
    if !loopback && o.token_file.is_none() {
        return Err(Error::Usage(format!(
            "--bind {} is not a loopback address: give --token-file (NAME:TOKEN lines) so that only reviewers with a token can use the page",
            o.bind
        )));
    }
    let tokens = match &o.token_file {
        Some(p) => auth::Tokens::read(p)?,
        None => auth::Tokens::default(),
    };
    if !o.log_dir.is_dir() {
        return Err(Error::data(&o.log_dir, "no such log folder"));
    }
    if let Some(e) = &o.evidence_dir {
        if !e.is_dir() {
            return Err(Error::data(e, "no such evidence folder"));
        }
    }
    let index = index::Index::open(&o.log_dir)?;
    let labels_dir = o.labels_dir.clone().unwrap_or_else(|| o.log_dir.clone());
    let labels = labels::LabelLog::open(&labels_dir).map_err(|e| match (&o.labels_dir, e) {
        // The log folder is often the daemon's, not the reviewer's.
        (None, Error::Io { path, source }) => Error::Runtime(format!(
            "{}: {source}; give --labels DIR for a folder you can write",
            path.display()
        )),
        (_, e) => e,
    })?;
    let labels_path = labels.path().to_path_buf();
    let listener = TcpListener::bind(&o.bind)
        .map_err(|e| Error::Runtime(format!("--bind {}: cannot listen: {e}", o.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Runtime(format!("--bind {}: {e}", o.bind)))?;
    let reviewer = o
        .reviewer
        .clone()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "reviewer".into());
    let has_tokens = !tokens.is_empty();
    let app = web::App::new(web::Setup {
        index,
        labels,
        evidence_dir: o.evidence_dir.clone(),
        tokens,
        csrf: auth::random_token()?,
        loopback_port: loopback.then_some(addr.port()),
        reviewer,
    });
    let limits = Limits {
        // A page loads a dozen images at once per view.
        connection_deadline: std::time::Duration::from_secs(30),
        ..Limits::default()
    };
    let server = serve_router(listener, web::router(app), limits)?;
    Ok(Review {
        server,
        labels: labels_path,
        tokens: has_tokens,
    })
}

/// `evidence.json` as the page reads it: the record, and the full-resolution
/// frame's file of format /2.
#[derive(Clone, Debug)]
pub struct EvidenceView {
    pub record: EvidenceRecord,
    pub frame: Option<String>,
}

/// Reads an evidence folder's `evidence.json` (format /1 or /2).
pub fn read_evidence(folder: &Path) -> Result<EvidenceView> {
    let p = folder.join(EVIDENCE_JSON);
    let text = std::fs::read(&p).at(&p)?;
    let bad = |e: serde_json::Error| Error::data(&p, format!("invalid evidence record: {e}"));
    let mut v: serde_json::Value = serde_json::from_slice(&text).map_err(bad)?;
    // The /2 field is taken out first, so the record type reads both formats.
    let frame = match v.as_object_mut().and_then(|o| o.remove("frame")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(f)) => Some(f),
        Some(other) => {
            return Err(Error::data(
                &p,
                format!("invalid evidence record: frame {other} is not a file name"),
            ))
        }
    };
    let record: EvidenceRecord = serde_json::from_value(v).map_err(bad)?;
    if !EVIDENCE_FORMATS.contains(&record.format.as_str()) {
        return Err(Error::data(
            &p,
            format!(
                "format {:?} is not one of {EVIDENCE_FORMATS:?}",
                record.format
            ),
        ));
    }
    Ok(EvidenceView { record, frame })
}

impl EvidenceView {
    /// Every file the record names (the ones the page may serve).
    pub fn files(&self) -> Vec<&str> {
        let r = &self.record;
        let mut v = vec![r.input.as_str(), r.panel.as_str(), EVIDENCE_JSON];
        v.extend(self.frame.as_deref());
        for e in &r.ccm {
            v.extend([e.pos.as_str(), e.neg.as_str()]);
            v.extend(e.cwm.as_deref());
        }
        v
    }
}
