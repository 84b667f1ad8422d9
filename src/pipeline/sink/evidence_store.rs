//! The evidence folder: one sub-folder per kept frame (`f000000001234`),
//! written atomically by [`Evidence::write`], under a byte quota that deletes
//! the oldest evidence first. Only folders this store names are counted and
//! deleted: the decision log is never touched, even if it shares the folder.
//!
//! The quota counts the disk the evidence takes: the blocks allocated to
//! each file and to its folder (`st_blocks`), not the files' lengths, which
//! understate small files by up to a block each (a few kB of PNG take 4 kB
//! blocks, and the folder one more).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::evidence::Evidence;
use crate::pipeline::metrics::Metrics;

pub struct EvidenceStore {
    dir: PathBuf,
    /// The file system's allocation block (for estimates before writing).
    block: u64,
    quota_bytes: u64,
    /// Oldest first.
    entries: VecDeque<(PathBuf, u64)>,
    total: u64,
    metrics: Arc<Metrics>,
}

/// The folder name of frame `id`'s evidence.
pub fn folder_name(id: u64) -> String {
    format!("f{id:012}")
}

fn frame_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('f')?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The disk a file or folder entry takes: its allocated blocks.
fn allocated(m: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        m.len()
    }
}

/// The disk an evidence folder takes: the folder and its files.
fn dir_bytes(dir: &Path) -> u64 {
    let own = std::fs::metadata(dir).map(|m| allocated(&m)).unwrap_or(0);
    own + std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| allocated(&m))
                .sum::<u64>()
        })
        .unwrap_or(0)
}

/// What writing `files` (their lengths) into a new folder will take: each
/// rounded up to the file system's block, plus one block for the folder.
fn estimate(lengths: impl Iterator<Item = u64>, block: u64) -> u64 {
    block + lengths.map(|n| n.div_ceil(block) * block).sum::<u64>()
}

impl EvidenceStore {
    /// Opens (creating) the folder, removes half-written temporary folders
    /// left by a crash, and counts what is there, oldest first.
    pub fn open(dir: &Path, quota_bytes: u64, metrics: Arc<Metrics>) -> Result<Self> {
        std::fs::create_dir_all(dir).at(dir)?;
        let dir = dir.canonicalize().at(dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if name.starts_with(".f") && name.contains(".tmp") {
                std::fs::remove_dir_all(&p).at(&p)?;
                tracing::info!(evidence = %p.display(), "removed half-written evidence left by a crash");
                continue;
            }
            if let Some(id) = frame_of(&name) {
                let modified = e.metadata().and_then(|m| m.modified()).ok();
                found.push((modified, id, p));
            }
        }
        // Oldest first: by time written, then by frame id.
        found.sort();
        let entries: VecDeque<(PathBuf, u64)> = found
            .into_iter()
            .map(|(_, _, p)| {
                let b = dir_bytes(&p);
                (p, b)
            })
            .collect();
        let total = entries.iter().map(|e| e.1).sum();
        metrics.evidence_bytes.set(total);
        let block = block_size(&dir);
        let mut s = EvidenceStore {
            dir,
            block,
            quota_bytes,
            entries,
            total,
            metrics,
        };
        s.enforce(0)?;
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn quota(&self) -> u64 {
        self.quota_bytes
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The largest frame id with evidence here.
    pub fn last_frame(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter_map(|(p, _)| frame_of(&p.file_name()?.to_string_lossy()))
            .max()
    }

    /// Changes the quota (reload); deletes the oldest if now over it.
    pub fn set_quota(&mut self, quota_bytes: u64) -> Result<()> {
        self.quota_bytes = quota_bytes;
        self.enforce(0)
    }

    /// Deletes the oldest evidence until `incoming` more bytes fit.
    fn enforce(&mut self, incoming: u64) -> Result<()> {
        while self.total + incoming > self.quota_bytes {
            let Some((p, b)) = self.entries.pop_front() else {
                break;
            };
            if p.exists() {
                std::fs::remove_dir_all(&p).at(&p)?;
            }
            self.total -= b;
            self.metrics.evidence_deleted.inc();
            tracing::debug!(evidence = %p.display(), "deleted to stay within the evidence quota");
        }
        self.metrics.evidence_bytes.set(self.total);
        Ok(())
    }

    /// Writes frame `id`'s evidence; returns its folder, or `None` when the
    /// evidence alone is larger than the quota (counted, logged).
    pub fn store(&mut self, id: u64, ev: &Evidence) -> Result<Option<PathBuf>> {
        let estimate = estimate(ev.file_lengths().into_iter(), self.block);
        if estimate > self.quota_bytes {
            self.metrics.evidence_over_quota.inc();
            tracing::warn!(
                frame = id,
                "evidence of {estimate} bytes exceeds evidence.quota_bytes ({}); not kept",
                self.quota_bytes
            );
            return Ok(None);
        }
        self.enforce(estimate)?;
        let dir = self.dir.join(folder_name(id));
        if let Some(i) = self.entries.iter().position(|(p, _)| *p == dir) {
            let (_, b) = self.entries.remove(i).expect("index in range");
            self.total -= b;
        }
        ev.write(&dir)?;
        let bytes = dir_bytes(&dir);
        self.entries.push_back((dir.clone(), bytes));
        self.total += bytes;
        self.metrics.evidence_written.inc();
        // The estimate may have been short: delete older ones, never this one.
        while self.total > self.quota_bytes && self.entries.len() > 1 {
            let (p, b) = self.entries.pop_front().expect("non-empty");
            std::fs::remove_dir_all(&p).at(&p)?;
            self.total -= b;
            self.metrics.evidence_deleted.inc();
        }
        self.metrics.evidence_bytes.set(self.total);
        Ok(Some(dir))
    }
}

/// The allocation block of the file system holding `dir` (`st_blksize`;
/// 4 kB when it cannot be read).
fn block_size(dir: &Path) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(dir) {
            return m.blksize().max(512);
        }
    }
    let _ = dir;
    4096
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{EvidenceRecord, Reproduction};

    fn fake(bytes: usize) -> Evidence {
        Evidence {
            record: EvidenceRecord {
                format: crate::evidence::EVIDENCE_FORMAT.into(),
                classes: vec!["a".into()],
                decision: 0,
                rows: 1,
                cols: 1,
                channels: 1,
                scaling: "raw".into(),
                model_id: None,
                input: "input.png".into(),
                frame: None,
                panel: "panel.png".into(),
                ccm: vec![],
            },
            files: vec![("input.png".into(), vec![7; bytes])],
            check: Reproduction {
                scores: vec![],
                decision: 0,
                recorded_decision: 0,
                max_abs_error: 0.0,
                out_of_tolerance: vec![],
            },
        }
    }

    #[test]
    fn quota_deletes_oldest_first_and_spares_other_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("decisions.jsonl"), vec![b'x'; 50_000]).unwrap();
        let m = Arc::new(Metrics::new());
        let mut s = EvidenceStore::open(d.path(), 30_000, m.clone()).unwrap();
        for id in 0..10 {
            assert!(s.store(id, &fake(5_000)).unwrap().is_some());
            assert!(s.total_bytes() <= 30_000, "{}", s.total_bytes());
        }
        let mut kept: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert!(kept.contains(&"decisions.jsonl".to_string()));
        assert!(kept.contains(&folder_name(9)));
        assert!(!kept.contains(&folder_name(0)));
        assert_eq!(m.evidence_written.get(), 10);
        assert!(m.evidence_deleted.get() >= 5);
        // Too big for the quota on its own: not written.
        assert_eq!(s.store(10, &fake(40_000)).unwrap(), None);
        assert_eq!(m.evidence_over_quota.get(), 1);
        // A restart counts what is there and knows the last frame.
        drop(s);
        std::fs::create_dir(d.path().join(".f000000000011.tmp99")).unwrap();
        let s = EvidenceStore::open(d.path(), 30_000, m).unwrap();
        assert_eq!(s.last_frame(), Some(9));
        assert!(!d.path().join(".f000000000011.tmp99").exists());
    }
}
