//! Retention of the decision log: how much of it stays on disk.
//!
//! At 30 fps and ~600-byte lines the log grows about 1.5 GB a day, so it
//! needs a bound as the evidence folder has one. Two limits, either or both:
//!
//! * `output.log.keep_bytes`: the disk the log may use, the active file
//!   included. Enforced at each rotation with room for a whole new active
//!   file, so the log never passes it between rotations either. When the
//!   key is absent the bound is [`DEFAULT_KEEP_DISK_PERCENT`] of the log
//!   folder's file system (never less than two rotations), so a box that is
//!   never configured still cannot fill its disk with the log; `0` turns the
//!   bound off.
//! * `output.log.keep_days`: rotated files whose last write is older are
//!   deleted (checked at rotation and every [`PASS_EVERY`]).
//!
//! Only rotated files (`decisions.NNNNNN.jsonl`) are ever deleted, oldest
//! (lowest number) first: never the active file, never any other file in the
//! folder (the review loop's `labels.jsonl`, an operator's notes). Deletions
//! are counted (`gcm_log_files_deleted_total`, `gcm_log_bytes_deleted_total`)
//! and the log's size and the file system's free space are gauges.
//!
//! Free space is watched as well: below [`LOW_FREE_PERCENT`] of the file
//! system the daemon warns once (and again after it recovered and fell
//! again), whoever filled the disk. The log does not delete beyond its own
//! limits to make room for others: a full disk makes the log's writes fail,
//! which the log already survives (lines wait in memory, `/healthz` reports
//! it), and records are only dropped by the rule the operator set.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{LogConfig, DEFAULT_KEEP_DISK_PERCENT};
use crate::pipeline::metrics::Metrics;

use super::log::{log_files, rotation_number};

/// Below this share of free space on the log's file system the daemon warns.
pub const LOW_FREE_PERCENT: u64 = 5;

/// How often the age limit, the gauges and free space are checked between
/// rotations.
pub const PASS_EVERY: Duration = Duration::from_secs(60);

/// A file system's size and the space left to unprivileged writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The file system holding `dir` (`statvfs`); `None` where it cannot be read.
pub fn disk(dir: &Path) -> Option<Disk> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `s` a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        let frag = s.f_frsize as u64;
        Some(Disk {
            total_bytes: s.f_blocks as u64 * frag,
            free_bytes: s.f_bavail as u64 * frag,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        None
    }
}

/// The byte bound when `keep_bytes` is not set: the default share of a file
/// system of `total` bytes, at least two rotations.
pub fn default_keep_bytes(total: u64, rotate_bytes: u64) -> u64 {
    (total / 100 * DEFAULT_KEEP_DISK_PERCENT).max(2 * rotate_bytes)
}

/// What one pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub files: u64,
    pub bytes: u64,
    /// What the log's files take after the pass.
    pub kept_bytes: u64,
}

pub struct Retention {
    /// 0: no byte bound.
    keep_bytes: u64,
    keep_age: Option<Duration>,
    /// Room kept for the active file at a rotation.
    rotate_bytes: u64,
    low_free_warned: bool,
    last_pass: Option<Instant>,
}

impl Retention {
    /// The limits of `cfg` for the log in `dir` (the default byte bound is
    /// taken from `dir`'s file system, read once here).
    pub fn new(dir: &Path, cfg: &LogConfig) -> Self {
        let keep_bytes = match cfg.keep_bytes {
            Some(k) => k,
            None => match disk(dir) {
                Some(d) => default_keep_bytes(d.total_bytes, cfg.rotate_bytes),
                None => {
                    tracing::warn!(
                        log = %dir.display(),
                        "cannot read the size of the decision log's file system; without output.log.keep_bytes the log has no size limit"
                    );
                    0
                }
            },
        };
        Retention {
            keep_bytes,
            keep_age: (cfg.keep_days > 0).then(|| Duration::from_secs(cfg.keep_days * 86_400)),
            rotate_bytes: cfg.rotate_bytes,
            low_free_warned: false,
            last_pass: None,
        }
    }

    /// The byte bound in effect (0: none).
    pub fn keep_bytes(&self) -> u64 {
        self.keep_bytes
    }

    /// A pass if the last is [`PASS_EVERY`] old (between rotations).
    pub fn maybe_pass(&mut self, dir: &Path, metrics: &Metrics) {
        if self.last_pass.is_none_or(|t| t.elapsed() >= PASS_EVERY) {
            self.pass(dir, metrics);
        }
    }

    /// Deletes rotated files, oldest first, until the log's files plus room
    /// for a whole active file fit the byte bound, and every rotated file
    /// older than the age limit; updates the gauges and warns of low free
    /// space. Trouble deleting is logged, never fatal.
    pub fn pass(&mut self, dir: &Path, metrics: &Metrics) -> Pruned {
        self.last_pass = Some(Instant::now());
        let pruned = self.prune(dir, SystemTime::now(), metrics);
        metrics.log_bytes.set(pruned.kept_bytes);
        if let Some(d) = disk(dir) {
            metrics.log_disk_free_bytes.set(d.free_bytes);
            let low = d.free_bytes.saturating_mul(100) < d.total_bytes * LOW_FREE_PERCENT;
            if low && !self.low_free_warned {
                tracing::warn!(
                    log = %dir.display(),
                    "the decision log's file system is almost full: {} MB free of {} MB (below {LOW_FREE_PERCENT}%); the log itself takes {} MB (bound {})",
                    d.free_bytes >> 20,
                    d.total_bytes >> 20,
                    pruned.kept_bytes >> 20,
                    if self.keep_bytes == 0 { "none".to_string() } else { format!("{} MB", self.keep_bytes >> 20) }
                );
            }
            self.low_free_warned = low;
        }
        pruned
    }

    /// [`Retention::pass`]'s deletions, with `now` for the age limit.
    pub fn prune(&self, dir: &Path, now: SystemTime, metrics: &Metrics) -> Pruned {
        let files = match log_files(dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("decision log retention: {e}");
                return Pruned::default();
            }
        };
        // (path, length, last write); the active file is last and stays.
        let mut sized: Vec<_> = files
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.len(), m.modified().ok()))
            })
            .collect();
        let has_active = sized
            .last()
            .is_some_and(|(p, ..)| rotation_number(p).is_none());
        let active = if has_active {
            sized[sized.len() - 1].1
        } else {
            0
        };
        let rotated = sized.len() - usize::from(has_active);
        let mut total: u64 = sized.iter().map(|(_, len, _)| len).sum();
        let room = self.rotate_bytes.max(active);
        let mut out = Pruned::default();
        for (path, len, modified) in sized.drain(..rotated) {
            let too_big = self.keep_bytes > 0 && total - active + room > self.keep_bytes;
            let too_old = self.keep_age.is_some_and(|age| {
                modified.is_some_and(|m| now.duration_since(m).unwrap_or_default() > age)
            });
            if !too_big && !too_old {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    out.files += 1;
                    out.bytes += len;
                    metrics.log_files_deleted.inc();
                    metrics.log_bytes_deleted.add(len);
                    tracing::info!(
                        log = %path.display(),
                        bytes = len,
                        "deleted an old decision log file ({})",
                        if too_big { "output.log.keep_bytes" } else { "output.log.keep_days" }
                    );
                }
                Err(e) => tracing::warn!("cannot delete old decision log {}: {e}", path.display()),
            }
        }
        out.kept_bytes = total;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_is_a_share_of_the_disk_but_at_least_two_rotations() {
        let rotate = 64 << 20;
        assert_eq!(default_keep_bytes(100 << 30, rotate), 10 << 30);
        assert_eq!(default_keep_bytes(512 << 20, rotate), 2 * rotate);
    }

    #[test]
    fn the_file_system_of_a_folder_is_read() {
        let d = tempfile::tempdir().unwrap();
        let disk = disk(d.path()).expect("statvfs of a temp dir");
        assert!(
            disk.total_bytes > 0 && disk.free_bytes <= disk.total_bytes,
            "{disk:?}"
        );
    }
}
