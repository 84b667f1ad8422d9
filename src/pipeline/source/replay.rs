//! Image-folder replay: the folder's images in sorted file-name order,
//! optionally looped and paced.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::{FrameSource, Next, Pacer};
use crate::config::ReplayConfig;
use crate::data::image_io::is_image_name;
use crate::error::{Error, IoContext, Result};
use crate::pipeline::frame::{Captured, FrameData};

pub struct Replay {
    dir: PathBuf,
    files: Vec<PathBuf>,
    pos: usize,
    looped: bool,
    pacer: Pacer,
    fps: f64,
}

impl Replay {
    /// Lists the folder; a missing folder or one without images is an error.
    pub fn open(c: &ReplayConfig) -> Result<Self> {
        let files = list(&c.dir)?;
        Ok(Replay {
            dir: c.dir.clone(),
            files,
            pos: 0,
            looped: c.loop_,
            pacer: Pacer::new(c.fps, "source.replay.fps")?,
            fps: c.fps,
        })
    }
}

/// The image files directly in `dir`, sorted by file name.
pub fn list(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::no_input(dir, "source.replay.dir: no such folder"));
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).at(dir)? {
        let p = e.at(dir)?.path();
        if p.is_file() && is_image_name(&p) {
            files.push(p);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(Error::data(
            dir,
            "source.replay.dir: no image files (png, jpg, jpeg, bmp, tif, tiff) in the folder",
        ));
    }
    Ok(files)
}

impl FrameSource for Replay {
    fn describe(&self) -> String {
        format!(
            "replay of {} images in {}{}{}",
            self.files.len(),
            self.dir.display(),
            if self.looped { ", looped" } else { "" },
            if self.fps > 0.0 {
                format!(", {} fps", self.fps)
            } else {
                ", unpaced".into()
            }
        )
    }

    fn live(&self) -> bool {
        self.pacer.paced()
    }

    fn next(&mut self, stop: &AtomicBool) -> Result<Next> {
        if self.pos == self.files.len() {
            if !self.looped {
                return Ok(Next::End);
            }
            self.pos = 0;
        }
        if !self.pacer.wait(stop) {
            return Ok(Next::Stopped);
        }
        let path = &self.files[self.pos];
        self.pos += 1;
        // A file that vanished or cannot be read is fatal: replay is for tests
        // and audits, where a silently shorter run would mislead.
        let bytes = std::fs::read(path).at(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Next::Frame(Captured {
            name: Some(name),
            data: FrameData::File { bytes },
            age: std::time::Duration::ZERO,
        }))
    }
}
