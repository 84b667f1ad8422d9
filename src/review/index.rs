//! The decision log in memory, for the review page: read once, then only
//! what the daemon appended since, and the filters, pages and counts the
//! page asks for.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::labels::{Labels, Status};
use crate::error::{Error, IoContext, Result};
use crate::pipeline::sink::log::{log_files, LineError, LogLine, ACTIVE};

/// A log file as far as it was read.
#[derive(Clone, Debug)]
struct FileRead {
    path: PathBuf,
    /// Bytes read (up to the last whole line).
    read: u64,
    /// The last line read, newline included: still there, at the same
    /// place, when nothing but appends happened.
    last: Vec<u8>,
}

/// The decisions of a log folder, oldest first.
pub struct Index {
    dir: PathBuf,
    /// The log files read, oldest first.
    files: Vec<FileRead>,
    pub lines: Vec<LogLine>,
    by_frame: HashMap<u64, usize>,
    /// Lines that are not decision lines (skipped).
    pub foreign: u64,
    /// Every class any line names, in the order first seen.
    pub classes: Vec<String>,
}

impl Index {
    pub fn open(dir: &Path) -> Result<Index> {
        let mut ix = Index {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            lines: Vec::new(),
            by_frame: HashMap::new(),
            foreign: 0,
            classes: Vec::new(),
        };
        ix.refresh()?;
        Ok(ix)
    }

    /// Reads what was appended since the last call. A rotation (the active
    /// file renamed to the next rotated one, a new active file) is followed
    /// where the old active file was left off; any other change (files gone,
    /// the active file's end rewritten: the daemon cuts garbage lines when
    /// it starts) reads everything again.
    pub fn refresh(&mut self) -> Result<()> {
        let files = log_files(&self.dir)?;
        let known = |f: &[PathBuf], old: &[FileRead]| {
            f.len() == old.len() && f.iter().zip(old).all(|(a, b)| *a == b.path)
        };
        let fresh = |path: &PathBuf| FileRead {
            path: path.clone(),
            read: 0,
            last: Vec::new(),
        };
        let n = self.files.len();
        let rotated_once = n > 0
            && files.len() == n + 1
            && self.files[n - 1].path.ends_with(ACTIVE)
            && known(&files[..n - 1], &self.files[..n - 1])
            && files[n].ends_with(ACTIVE);
        if rotated_once {
            // What was read of the old active file is the start of the
            // newest rotated file.
            self.files[n - 1].path = files[n - 1].clone();
            self.files.push(fresh(&files[n]));
        }
        if !known(&files, &self.files) || !self.files.last().is_none_or(still_there) {
            self.files = files.iter().map(fresh).collect();
            self.lines.clear();
            self.by_frame.clear();
            self.foreign = 0;
        }
        for i in 0..self.files.len() {
            let f = &mut self.files[i];
            let text = read_whole_lines(&f.path, f.read)?;
            f.read += text.len() as u64;
            let mut lines = text.split_inclusive(|&b| b == b'\n').peekable();
            while let Some(raw) = lines.next() {
                if lines.peek().is_none() {
                    self.files[i].last = raw.to_vec();
                }
                match LogLine::parse(String::from_utf8_lossy(raw).trim_end()) {
                    Ok(l) => self.push(l),
                    Err(_) if raw.trim_ascii().is_empty() => {}
                    // A newer daemon's major version: its lines cannot be
                    // shown right, so say so instead of hiding them.
                    Err(LineError::NewerMajor(why)) => {
                        return Err(Error::data(&self.files[i].path, why))
                    }
                    Err(LineError::NotDecision(_)) => self.foreign += 1,
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, l: LogLine) {
        for c in &l.classes {
            if !self.classes.contains(c) {
                self.classes.push(c.clone());
            }
        }
        self.by_frame.insert(l.frame, self.lines.len());
        self.lines.push(l);
    }

    pub fn get(&self, frame: u64) -> Option<&LogLine> {
        self.by_frame.get(&frame).map(|&i| &self.lines[i])
    }

    /// The positions of the lines `f` selects, newest first.
    pub fn select(&self, f: &Filter, labels: &Labels) -> Vec<usize> {
        (0..self.lines.len())
            .rev()
            .filter(|&i| f.admits(&self.lines[i], labels))
            .collect()
    }

    /// The page's counts over every decision.
    pub fn summary(&self, labels: &Labels, buckets: usize) -> Summary {
        let mut s = Summary {
            decisions: self.lines.len() as u64,
            classes: self.classes.clone(),
            ..Summary::default()
        };
        let n = self.classes.len();
        s.confusion = vec![vec![0; n]; n];
        let pos = |c: &str| self.classes.iter().position(|k| k == c);
        for l in &self.lines {
            *s.per_class.entry(l.class.clone()).or_default() += 1;
            let label = labels.label(l.frame);
            *s.per_status.entry(Status::of(&l.class, label)).or_default() += 1;
            if let (Some(d), Some(t)) = (pos(&l.class), label.and_then(pos)) {
                s.confusion[d][t] += 1;
            }
            s.divergent += l.divergent as u64;
        }
        s.over_time = self.over_time(buckets);
        s
    }

    /// Decisions and divergent ones in `buckets` equal spans of capture time.
    fn over_time(&self, buckets: usize) -> Vec<Bucket> {
        let times = self.lines.iter().map(|l| l.captured_unix_us);
        let (Some(lo), Some(hi)) = (times.clone().min(), times.max()) else {
            return Vec::new();
        };
        let width = ((hi - lo) / buckets.max(1) as u64).max(1);
        let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
        for l in &self.lines {
            let k = ((l.captured_unix_us - lo) / width).min(buckets as u64 - 1);
            let b = out.entry(k).or_insert(Bucket {
                // Saturating: capture times at the end of u64's range
                // (a clock gone wrong) must not overflow the last bucket.
                start_unix_us: lo.saturating_add(k * width),
                end_unix_us: lo.saturating_add((k + 1) * width),
                decisions: 0,
                divergent: 0,
            });
            b.decisions += 1;
            b.divergent += l.divergent as u64;
        }
        out.into_values().collect()
    }
}

/// The bytes of `path` from `from` to its last newline.
fn read_whole_lines(path: &Path, from: u64) -> Result<Vec<u8>> {
    let mut f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    if len <= from {
        return Ok(Vec::new());
    }
    f.seek(SeekFrom::Start(from)).at(path)?;
    let mut text = Vec::with_capacity((len - from) as usize);
    f.take(len - from).read_to_end(&mut text).at(path)?;
    let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    text.truncate(whole);
    Ok(text)
}

/// Whether the last line read of `f` is still where it was.
fn still_there(f: &FileRead) -> bool {
    let at = f.read - f.last.len() as u64;
    let mut now = vec![0u8; f.last.len()];
    File::open(&f.path)
        .and_then(|mut h| {
            h.seek(SeekFrom::Start(at))?;
            h.read_exact(&mut now)
        })
        .is_ok_and(|()| now == f.last)
}

/// What the gallery shows; every field optional (absent: no restriction).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub class: Option<String>,
    pub margin_min: Option<f32>,
    pub margin_max: Option<f32>,
    /// The decided class's probability.
    pub p_min: Option<f32>,
    pub p_max: Option<f32>,
    pub divergent_only: bool,
    /// Capture time, microseconds since the Unix epoch, inclusive.
    pub from_us: Option<u64>,
    pub to_us: Option<u64>,
    /// A model id, or a prefix of one.
    pub model: Option<String>,
    pub status: Option<Status>,
    pub evidence_only: bool,
}

impl Filter {
    /// Parses the query's filter keys (`class`, `margin_min`, `margin_max`,
    /// `p_min`, `p_max`, `divergent`, `from`, `to`, `model`, `status`,
    /// `evidence`); other keys are ignored, empty values too. A value that
    /// does not parse is an error naming the key.
    pub fn parse(query: &[(String, String)]) -> std::result::Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in query.iter().filter(|(_, v)| !v.is_empty()) {
            let num = || {
                v.parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("{k}={v:?} is not a number"))
            };
            let time = || {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}={v:?} is not a time in microseconds"))
            };
            let flag = || Ok::<bool, String>(matches!(v.as_str(), "1" | "true" | "on"));
            match k.as_str() {
                "class" => f.class = Some(v.clone()),
                "margin_min" => f.margin_min = Some(num()?),
                "margin_max" => f.margin_max = Some(num()?),
                "p_min" => f.p_min = Some(num()?),
                "p_max" => f.p_max = Some(num()?),
                "divergent" => f.divergent_only = flag()?,
                "from" => f.from_us = Some(time()?),
                "to" => f.to_us = Some(time()?),
                "model" => f.model = Some(v.clone()),
                "status" => {
                    f.status = Some(Status::parse(v).ok_or_else(|| {
                        format!("status={v:?} is not unreviewed, confirmed or corrected")
                    })?)
                }
                "evidence" => f.evidence_only = flag()?,
                _ => {}
            }
        }
        Ok(f)
    }

    pub fn admits(&self, l: &LogLine, labels: &Labels) -> bool {
        let p = l
            .probabilities
            .get(l.class_index)
            .copied()
            .unwrap_or(f32::NAN);
        let within = |v: f32, lo: Option<f32>, hi: Option<f32>| {
            lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi)
        };
        self.class.as_ref().is_none_or(|c| *c == l.class)
            && within(l.margin, self.margin_min, self.margin_max)
            && within(p, self.p_min, self.p_max)
            && (!self.divergent_only || l.divergent)
            && self.from_us.is_none_or(|t| l.captured_unix_us >= t)
            && self.to_us.is_none_or(|t| l.captured_unix_us <= t)
            && self
                .model
                .as_ref()
                .is_none_or(|m| l.model.starts_with(m.as_str()))
            && self
                .status
                .is_none_or(|s| Status::of(&l.class, labels.label(l.frame)) == s)
            && (!self.evidence_only || l.evidence.is_some())
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub decisions: u64,
    pub divergent: u64,
    pub classes: Vec<String>,
    pub per_class: BTreeMap<String, u64>,
    pub per_status: HashMap<Status, u64>,
    /// `confusion[decided][label]`, over reviewed decisions, in `classes` order.
    pub confusion: Vec<Vec<u64>>,
    pub over_time: Vec<Bucket>,
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    pub start_unix_us: u64,
    pub end_unix_us: u64,
    pub decisions: u64,
    pub divergent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::infer::Latency;
    use crate::pipeline::sink::log::Checks;

    fn line(frame: u64, class: usize, margin: f32, divergent: bool) -> LogLine {
        let classes = vec!["crack".to_string(), "ok".to_string()];
        LogLine {
            schema: None,
            frame,
            captured_unix_us: 1_000 + frame,
            source: None,
            class: classes[class].clone(),
            class_index: class,
            classes,
            scores: vec![0.5, 0.25],
            probabilities: if class == 0 {
                vec![0.9, 0.1]
            } else {
                vec![0.3, 0.7]
            },
            margin,
            verdict: None,
            reason: None,
            latency: Latency::default(),
            model: "abcdef".into(),
            checks: Checks::default(),
            divergent,
            evidence: None,
            evidence_error: None,
        }
    }

    fn text(lines: &[LogLine]) -> String {
        lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn a_newer_minor_is_read_and_a_newer_major_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let active = d.path().join(ACTIVE);
        let mut l = line(0, 0, 0.1, false);
        l.schema = Some("gcm-inspect/log/1.7".into());
        let newer = text(&[l]).replace("\"frame\"", "\"from_the_future\":1,\"frame\"");
        std::fs::write(&active, &newer).unwrap();
        let ix = Index::open(d.path()).unwrap();
        assert_eq!((ix.lines.len(), ix.foreign), (1, 0), "{newer}");
        let mut l = line(1, 0, 0.1, false);
        l.schema = Some("gcm-inspect/log/2.0".into());
        std::fs::write(&active, text(&[l])).unwrap();
        let Err(e) = Index::open(d.path()) else {
            panic!("a major version this build does not know was read")
        };
        let e = e.to_string();
        assert!(e.contains(ACTIVE) && e.contains("2.0"), "{e}");
    }

    #[test]
    fn appended_and_rotated_lines_are_picked_up_and_a_torn_tail_waits() {
        let d = tempfile::tempdir().unwrap();
        let active = d.path().join(ACTIVE);
        std::fs::write(
            &active,
            text(&[line(0, 0, 0.1, false), line(1, 1, 0.2, true)]),
        )
        .unwrap();
        let mut ix = Index::open(d.path()).unwrap();
        assert_eq!(ix.lines.len(), 2);
        let mut more = text(&[line(2, 0, 0.3, false)]);
        more.push_str(r#"{"frame":3,"capt"#);
        let mut all = std::fs::read_to_string(&active).unwrap();
        all.push_str(&more);
        std::fs::write(&active, &all).unwrap();
        ix.refresh().unwrap();
        assert_eq!(ix.lines.len(), 3, "the torn line is not read yet");
        // The torn line completed, then a rotation and a new active file:
        // nothing is read twice, nothing is missed.
        all.push_str(&text(&[line(3, 0, 0.3, false)])[r#"{"frame":3,"capt"#.len()..]);
        std::fs::write(&active, &all).unwrap();
        std::fs::rename(&active, d.path().join("decisions.000001.jsonl")).unwrap();
        std::fs::write(&active, text(&[line(4, 1, 0.4, false)])).unwrap();
        ix.refresh().unwrap();
        let frames: Vec<u64> = ix.lines.iter().map(|l| l.frame).collect();
        assert_eq!(frames, vec![0, 1, 2, 3, 4]);
        assert_eq!(ix.get(4).unwrap().class, "ok");
        // A file cut shorter than what was read (garbage lines cut by the
        // daemon) is read again.
        let kept = text(&[line(4, 1, 0.4, false)]);
        std::fs::write(&active, format!("{kept}{{\"note\":1}}\n")).unwrap();
        ix.refresh().unwrap();
        assert_eq!((ix.lines.len(), ix.foreign), (5, 1));
        std::fs::write(
            &active,
            format!("{kept}{}", text(&[line(5, 0, 0.5, false)])),
        )
        .unwrap();
        ix.refresh().unwrap();
        let frames: Vec<u64> = ix.lines.iter().map(|l| l.frame).collect();
        assert_eq!((frames, ix.foreign), (vec![0, 1, 2, 3, 4, 5], 0));
        // Any other change reads everything again.
        std::fs::remove_file(d.path().join("decisions.000001.jsonl")).unwrap();
        ix.refresh().unwrap();
        assert_eq!(ix.lines.len(), 2);
        assert_eq!(ix.get(0), None);
    }

    #[test]
    fn filters_select_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let lines: Vec<LogLine> = (0..10)
            .map(|i| line(i, (i % 2) as usize, i as f32 / 10.0, i == 7))
            .collect();
        std::fs::write(d.path().join(ACTIVE), text(&lines)).unwrap();
        let ix = Index::open(d.path()).unwrap();
        let none = Labels::default();
        let q = |s: &str| -> Vec<(String, String)> {
            s.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let frames = |f: &Filter| -> Vec<u64> {
            ix.select(f, &none)
                .iter()
                .map(|&i| ix.lines[i].frame)
                .collect()
        };
        assert_eq!(
            frames(&Filter::default()),
            (0..10).rev().collect::<Vec<_>>()
        );
        let f = Filter::parse(&q("class=ok&margin_min=0.25&margin_max=0.75")).unwrap();
        assert_eq!(frames(&f), vec![7, 5, 3]);
        assert_eq!(frames(&Filter::parse(&q("divergent=1")).unwrap()), vec![7]);
        assert_eq!(
            frames(&Filter::parse(&q("p_min=0.8")).unwrap()),
            vec![8, 6, 4, 2, 0]
        );
        assert_eq!(
            frames(&Filter::parse(&q("from=1002&to=1003")).unwrap()),
            vec![3, 2]
        );
        assert!(frames(&Filter::parse(&q("model=abd")).unwrap()).is_empty());
        assert!(frames(&Filter::parse(&q("status=confirmed")).unwrap()).is_empty());
        let e = Filter::parse(&q("margin_min=x")).unwrap_err();
        assert!(e.contains("margin_min"), "{e}");
        let s = ix.summary(&none, 4);
        assert_eq!((s.decisions, s.divergent), (10, 1));
        assert_eq!(s.per_class["ok"], 5);
        assert_eq!(s.over_time.iter().map(|b| b.decisions).sum::<u64>(), 10);
    }
}
