//! The review page's HTTP endpoints (all JSON but the page and the files):
//!
//! | method, path | what |
//! |---|---|
//! | GET `/` | the page (gallery, detail and summary views) |
//! | GET `/static/app.js`, `/static/app.css` | its script and style |
//! | GET `/api/meta` | classes, models, reviewer, labels file, CSRF token |
//! | GET `/api/decisions?FILTER&page=&per=` | a gallery page, newest first |
//! | GET `/api/decisions/FRAME?FILTER` | one decision: line, evidence, labels, neighbours |
//! | GET `/api/summary` | counts per class and status, confusion matrix, divergences over time |
//! | GET `/evidence/FRAME/FILE` | a file its `evidence.json` names |
//! | POST `/api/labels` | `{"frame":F,"label":"crack"}` or `{"frame":F,"undo":true}` |
//!
//! `FILTER`: see [`Filter::parse`]. The whole page and every endpoint is
//! behind the checks of [`super::auth`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{self, Tokens};
use super::index::{Filter, Index};
use super::labels::{LabelLine, LabelLog, Status};
use super::{read_evidence, EvidenceView};
use crate::pipeline::sink::log::LogLine;

/// The largest request body (a label act is under 200 bytes).
pub const MAX_BODY: usize = 4 << 10;
/// Gallery page sizes.
const PER_PAGE: usize = 60;
const MAX_PER_PAGE: usize = 500;
/// Spans of the summary's divergences over time.
const TIME_BUCKETS: usize = 24;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What [`App::new`] needs.
pub struct Setup {
    pub index: Index,
    pub labels: LabelLog,
    pub evidence_dir: Option<PathBuf>,
    pub tokens: Tokens,
    pub csrf: String,
    /// `Some(port)` when bound to loopback: the Host header is checked.
    pub loopback_port: Option<u16>,
    /// The reviewer of requests without a token.
    pub reviewer: String,
}

struct Data {
    index: Index,
    labels: LabelLog,
}

pub struct App {
    data: Mutex<Data>,
    evidence_dir: Option<PathBuf>,
    tokens: Tokens,
    csrf: String,
    loopback_port: Option<u16>,
    reviewer: String,
}

impl App {
    pub fn new(s: Setup) -> Arc<App> {
        Arc::new(App {
            data: Mutex::new(Data {
                index: s.index,
                labels: s.labels,
            }),
            evidence_dir: s.evidence_dir,
            tokens: s.tokens,
            csrf: s.csrf,
            loopback_port: s.loopback_port,
            reviewer: s.reviewer,
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(handle).with_state(app)
}

/// A text answer with `status`.
fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (status, msg.into() + "\n").into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A refused request: its status and why.
struct Refusal(StatusCode, String);

impl Refusal {
    fn reply(self) -> Response {
        text(self.0, self.1)
    }
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found")
}

fn json_reply(v: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            b,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Headers every answer carries: no sniffing, no framing, no referrer (a
/// token may be in the address), scripts and images from here only.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    harden(answer(&app, &parts.method, &parts.uri, &parts.headers, body).await)
}

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The Host check of a loopback server (see [`super::auth`]).
fn host_ok(app: &App, h: &HeaderMap) -> bool {
    let Some(port) = app.loopback_port else {
        return true;
    };
    let host = header_str(h, header::HOST).unwrap_or("");
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|name| host == format!("{name}:{port}"))
}

async fn answer(
    app: &App,
    method: &Method,
    uri: &axum::http::Uri,
    h: &HeaderMap,
    body: Body,
) -> Response {
    if !host_ok(app, h) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "the Host header does not name this server",
        );
    }
    let query = parse_query(uri.query().unwrap_or(""));
    let Some(path) = segments(uri.path()) else {
        return not_found();
    };
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let reviewer = if app.tokens.is_empty() {
        app.reviewer.clone()
    } else {
        let given = query.iter().find(|(k, _)| k == "token").map(|(_, v)| v);
        if let (["" | "index.html"], Some(t)) = (path.as_slice(), given) {
            return login(app, t);
        }
        let presented = auth::presented(
            header_str(h, header::AUTHORIZATION),
            header_str(h, header::COOKIE),
        );
        match presented.and_then(|t| app.tokens.name_of(t)) {
            Some(name) => name.to_string(),
            None => {
                return text(
                    StatusCode::UNAUTHORIZED,
                    "a token is needed: open this address with ?token=YOUR_TOKEN once",
                )
            }
        }
    };
    let get = *method == Method::GET || *method == Method::HEAD;
    match (path.as_slice(), get) {
        ([""] | ["index.html"], true) => asset(INDEX_HTML, "text/html; charset=utf-8"),
        (["static", "app.js"], true) => asset(APP_JS, "text/javascript; charset=utf-8"),
        (["static", "app.css"], true) => asset(APP_CSS, "text/css; charset=utf-8"),
        (["api", "meta"], true) => meta(app, &reviewer),
        (["api", "decisions"], true) => gallery(app, &query),
        (["api", "decisions", frame], true) => detail(app, frame, &query),
        (["api", "summary"], true) => summary(app),
        (["evidence", frame, name], true) => evidence_file(app, frame, name),
        (["api", "labels"], false) if *method == Method::POST => {
            relabel(app, h, body, &reviewer).await
        }
        ([""] | ["index.html"] | ["static", ..] | ["api", ..] | ["evidence", ..], _) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => not_found(),
    }
}

/// `/?token=T`: a valid token becomes an HttpOnly cookie and the browser
/// goes to the page without the token in its address.
fn login(app: &App, token: &str) -> Response {
    if app.tokens.name_of(token).is_none() {
        return text(StatusCode::UNAUTHORIZED, "this token is not valid");
    }
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/",
        auth::COOKIE
    );
    match HeaderValue::from_str(&cookie) {
        Ok(c) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, HeaderValue::from_static("/")),
                (header::SET_COOKIE, c),
            ],
        )
            .into_response(),
        Err(_) => text(StatusCode::BAD_REQUEST, "a token must be plain text"),
    }
}

/// The path's segments, percent-decoded; `None` when one is `.` or `..`
/// or holds a slash, backslash or NUL once decoded, or is not UTF-8.
fn segments(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for raw in path.strip_prefix('/')?.split('/') {
        let s = String::from_utf8(percent_decode(raw)).ok()?;
        if s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(s);
    }
    Some(out)
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `a=1&b=x+y` as decoded pairs (`+` is a space).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                String::from_utf8_lossy(&percent_decode(&s.replace('+', " "))).into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn meta(app: &App, reviewer: &str) -> Response {
    let mut d = app.data();
    if let Err(e) = d.index.refresh() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let mut models: Vec<&str> = d.index.lines.iter().map(|l| l.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    json_reply(&json!({
        "classes": d.index.classes,
        "models": models,
        "decisions": d.index.lines.len(),
        "reviewer": reviewer,
        "labels": d.labels.path(),
        "csrf": app.csrf,
    }))
}

/// Reads the query's filter, refreshes the index and selects (newest first).
fn selection<'a>(
    app: &'a App,
    query: &[(String, String)],
) -> Result<(std::sync::MutexGuard<'a, Data>, Vec<usize>), Refusal> {
    let f = Filter::parse(query).map_err(|e| Refusal(StatusCode::BAD_REQUEST, e))?;
    let mut d = app.data();
    d.index
        .refresh()
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let sel = d.index.select(&f, &d.labels.labels);
    Ok((d, sel))
}

fn number<T: std::str::FromStr>(query: &[(String, String)], key: &str) -> Option<T> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn gallery(app: &App, query: &[(String, String)]) -> Response {
    let (d, sel) = match selection(app, query) {
        Ok(x) => x,
        Err(r) => return r.reply(),
    };
    let per = number::<usize>(query, "per")
        .unwrap_or(PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let page = number::<usize>(query, "page").unwrap_or(0);
    let items: Vec<Value> = sel
        .iter()
        .skip(page.saturating_mul(per))
        .take(per)
        .map(|&i| {
            let l = &d.index.lines[i];
            let label = d.labels.labels.label(l.frame);
            let thumb = app
                .folder(l)
                .filter(|f| f.is_dir())
                .map(|_| format!("/evidence/{}/input.png", l.frame));
            json!({
                "frame": l.frame,
                "captured_unix_us": l.captured_unix_us,
                "source": l.source,
                "class": l.class,
                "probability": l.probabilities.get(l.class_index),
                "margin": l.margin,
                "verdict": l.verdict,
                "divergent": l.divergent,
                "model": l.model,
                "label": label,
                "status": Status::of(&l.class, label),
                "thumb": thumb,
            })
        })
        .collect();
    json_reply(&json!({
        "total": sel.len(),
        "page": page,
        "per": per,
        "pages": sel.len().div_ceil(per),
        "items": items,
    }))
}

impl App {
    /// The evidence folder of a line (under `--evidence` when given).
    fn folder(&self, l: &LogLine) -> Option<PathBuf> {
        let ev = l.evidence.as_ref()?;
        Some(match &self.evidence_dir {
            Some(d) => d.join(ev.file_name()?),
            None => ev.clone(),
        })
    }

    /// The folder the line's evidence must lie in, resolved.
    fn root(&self, folder: &Path) -> Option<PathBuf> {
        let root = match &self.evidence_dir {
            Some(d) => d.clone(),
            None => folder.parent()?.to_path_buf(),
        };
        root.canonicalize().ok()
    }

    /// `folder/name` resolved, when it is a file inside the evidence root.
    fn inside(&self, folder: &Path, name: &str) -> Option<PathBuf> {
        let root = self.root(folder)?;
        let p = folder.join(name).canonicalize().ok()?;
        (p.starts_with(&root) && p.is_file()).then_some(p)
    }

    /// A line's evidence record, read only from inside the evidence root.
    fn evidence(&self, l: &LogLine) -> Result<(PathBuf, EvidenceView), &'static str> {
        let folder = self.folder(l).ok_or("none")?;
        if !folder.exists() {
            return Err("deleted");
        }
        self.inside(&folder, crate::evidence::EVIDENCE_JSON)
            .ok_or("unreadable")?;
        let view = read_evidence(&folder).map_err(|_| "unreadable")?;
        Ok((folder, view))
    }
}

fn evidence_file(app: &App, frame: &str, name: &str) -> Response {
    let Ok(frame) = frame.parse::<u64>() else {
        return not_found();
    };
    let line = {
        let d = app.data();
        match d.index.get(frame) {
            Some(l) => l.clone(),
            None => return not_found(),
        }
    };
    let Ok((folder, view)) = app.evidence(&line) else {
        return not_found();
    };
    if !view.files().contains(&name) {
        return not_found();
    }
    let Some(path) = app.inside(&folder, name) else {
        return not_found();
    };
    let kind = if name.ends_with(".png") {
        "image/png"
    } else {
        "application/json"
    };
    match std::fs::read(&path) {
        Ok(b) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            b,
        )
            .into_response(),
        Err(_) => not_found(),
    }
}

/// The index of the second-highest score.
fn runner_up(scores: &[f32], decided: usize) -> Option<usize> {
    (0..scores.len())
        .filter(|&j| j != decided)
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
}

/// The detail view's evidence: URLs of the frame, input, panel, and the
/// CWM and CCM parts of the decided class and the runner-up.
fn evidence_json(app: &App, l: &LogLine) -> Value {
    let (_, view) = match app.evidence(l) {
        Ok(x) => x,
        Err(state) => return json!({ "state": state }),
    };
    let url = |f: &str| format!("/evidence/{}/{f}", l.frame);
    let r = &view.record;
    let class = |j: usize, role: &str| {
        r.ccm.get(j).map(|e| {
            json!({
                "role": role,
                "class": e.class,
                "score": e.score,
                "score_from_evidence": e.score_from_evidence,
                "tolerance": e.tolerance,
                "cwm": e.cwm.as_deref().map(url),
                "pos": url(&e.pos),
                "neg": url(&e.neg),
            })
        })
    };
    let scores: Vec<f32> = r.ccm.iter().map(|e| e.score as f32).collect();
    let mut classes = vec![class(r.decision, "decided")];
    classes.extend(runner_up(&scores, r.decision).map(|j| class(j, "runner-up")));
    json!({
        "state": "kept",
        "format": r.format,
        "size": [r.cols, r.rows],
        "channels": r.channels,
        "frame": view.frame.as_deref().map(url),
        "input": url(&r.input),
        "panel": url(&r.panel),
        "classes": classes,
    })
}

fn detail(app: &App, frame: &str, query: &[(String, String)]) -> Response {
    let Ok(frame) = frame.parse::<u64>() else {
        return not_found();
    };
    let (d, sel) = match selection(app, query) {
        Ok(x) => x,
        Err(r) => return r.reply(),
    };
    let Some(l) = d.index.get(frame).cloned() else {
        return not_found();
    };
    let at = sel.iter().position(|&i| d.index.lines[i].frame == frame);
    let neighbour = |k: Option<usize>| k.and_then(|k| sel.get(k)).map(|&i| d.index.lines[i].frame);
    let label = d.labels.labels.label(frame).map(str::to_string);
    let history = d.labels.labels.history(frame).to_vec();
    let (prev, next) = (
        neighbour(at.and_then(|a| a.checked_sub(1))),
        neighbour(at.map(|a| a + 1)),
    );
    let total = sel.len();
    drop(d);
    json_reply(&json!({
        "line": l,
        "probability": l.probabilities.get(l.class_index),
        "runner_up": runner_up(&l.scores, l.class_index).and_then(|j| l.classes.get(j)),
        "label": label,
        "status": Status::of(&l.class, label.as_deref()),
        "history": history,
        "evidence": evidence_json(app, &l),
        "prev": prev,
        "next": next,
        "position": at,
        "total": total,
    }))
}

fn summary(app: &App) -> Response {
    let mut d = app.data();
    if let Err(e) = d.index.refresh() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let s = d.index.summary(&d.labels.labels, TIME_BUCKETS);
    json_reply(&s)
}

/// A relabelling request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Act {
    frame: u64,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    undo: bool,
}

/// The CSRF checks of a POST (see [`super::auth`]).
fn csrf_refusal(app: &App, h: &HeaderMap) -> Option<&'static str> {
    let json = header_str(h, header::CONTENT_TYPE)
        .is_some_and(|c| c.split(';').next() == Some("application/json"));
    if !json {
        return Some("Content-Type must be application/json");
    }
    if let Some(origin) = header_str(h, header::ORIGIN) {
        let host = header_str(h, header::HOST).unwrap_or("");
        if origin != format!("http://{host}") {
            return Some("the Origin is not this server");
        }
    }
    if !auth::csrf_ok(&app.csrf, header_str(h, auth::CSRF_HEADER)) {
        return Some("the X-CSRF-Token header is missing or wrong (reload the page)");
    }
    None
}

async fn relabel(app: &App, h: &HeaderMap, body: Body, reviewer: &str) -> Response {
    if let Some(why) = csrf_refusal(app, h) {
        return text(StatusCode::FORBIDDEN, why);
    }
    let declared = header_str(h, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a body of at most {MAX_BODY} bytes"),
        );
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a body of at most {MAX_BODY} bytes"),
            )
        }
    };
    let act: Act = match serde_json::from_slice(&bytes) {
        Ok(a) => a,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid act: {e}")),
    };
    match record(app, act, reviewer) {
        Ok(v) => json_reply(&v),
        Err(r) => r.reply(),
    }
}

/// Appends the act to `labels.jsonl`; returns the frame's new state.
fn record(app: &App, act: Act, reviewer: &str) -> Result<Value, Refusal> {
    let mut d = app.data();
    let l = d.index.get(act.frame).cloned().ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            format!("no decision of frame {}", act.frame),
        )
    })?;
    let label = match (act.undo, act.label) {
        (true, None) => d.labels.labels.before_last(act.frame).ok_or_else(|| {
            Refusal(
                StatusCode::CONFLICT,
                "nothing to undo for this frame".into(),
            )
        })?,
        (false, Some(c)) if l.classes.contains(&c) => Some(c),
        (false, Some(c)) => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("{c:?} is not one of the model's classes {:?}", l.classes),
            ))
        }
        _ => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "give either a label or undo: true".into(),
            ))
        }
    };
    let time_unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_micros() as u64);
    let line = LabelLine {
        frame: l.frame,
        evidence: l.evidence.clone(),
        label: label.clone(),
        previous_decision: l.class.clone(),
        model: l.model.clone(),
        reviewer: reviewer.to_string(),
        time_unix_us,
        undo: act.undo,
    };
    d.labels
        .append(line)
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json!({
        "frame": l.frame,
        "label": label,
        "status": Status::of(&l.class, label.as_deref()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_refuse_dot_dot_in_any_spelling() {
        assert_eq!(segments("/a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(segments("/").unwrap(), vec![""]);
        for bad in [
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/%2E%2E",
            "/a/..%2Fb",
            "/a/%5c",
            "/a/%00",
            "/a/.",
        ] {
            assert!(segments(bad).is_none(), "{bad}");
        }
        assert_eq!(
            parse_query("class=ok+ng&x=%41&flag"),
            vec![
                ("class".into(), "ok ng".into()),
                ("x".into(), "A".into()),
                ("flag".into(), String::new())
            ]
        );
    }
}
