//! Synthetic frames: the foundation's EL cell generator, paced like a camera.

use std::sync::atomic::AtomicBool;

use super::{FrameSource, Next, Pacer};
use crate::config::SyntheticConfig;
use crate::data::synth::{self, Kind};
use crate::error::{Error, Result};
use crate::pipeline::frame::{Captured, FrameData};

pub struct Synthetic {
    seed: u64,
    size: usize,
    kinds: Vec<Kind>,
    index: usize,
    pacer: Pacer,
    fps: f64,
}

impl Synthetic {
    pub fn new(c: &SyntheticConfig) -> Result<Self> {
        let kinds = synth::parse_kinds(&c.classes.join(","))
            .map_err(|m| Error::config("source.synthetic.classes", m))?;
        Ok(Synthetic {
            seed: c.seed,
            size: c.size_px,
            kinds,
            index: 0,
            pacer: Pacer::new(c.fps, "source.synthetic.fps")?,
            fps: c.fps,
        })
    }
}

impl FrameSource for Synthetic {
    fn describe(&self) -> String {
        format!(
            "synthetic {}x{} EL cells (seed {}, {})",
            self.size,
            self.size,
            self.seed,
            if self.fps > 0.0 {
                format!("{} fps", self.fps)
            } else {
                "unpaced".into()
            }
        )
    }

    fn live(&self) -> bool {
        self.pacer.paced()
    }

    fn next(&mut self, stop: &AtomicBool) -> Result<Next> {
        if !self.pacer.wait(stop) {
            return Ok(Next::Stopped);
        }
        let (kind, bytes) = synth::sample(self.seed, self.index, self.size, &self.kinds);
        let name = format!("synthetic-{}-{}", self.index, kind.name());
        self.index += 1;
        Ok(Next::Frame(Captured {
            name: Some(name),
            data: FrameData::Grey {
                width: self.size as u32,
                height: self.size as u32,
                bytes,
            },
            age: std::time::Duration::ZERO,
        }))
    }
}
