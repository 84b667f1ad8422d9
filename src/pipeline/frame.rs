//! A captured frame as it travels from the source to the model.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::preprocess::FrameData;

/// One frame from a source, before it has an id.
#[derive(Clone, Debug)]
pub struct Captured {
    /// Where it came from when that means something (the file name of a replay).
    pub name: Option<String>,
    pub data: FrameData,
    /// How long before its hand-over the frame was captured, as far as the
    /// source knows (a GStreamer buffer's timestamp: the network and the
    /// decoder's time); zero for a source that knows no better. The frame's
    /// capture time is the hand-over time less this.
    pub age: Duration,
}

/// A frame with its id and capture time.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Increasing over the daemon's life (it continues the log's last id
    /// after a restart); a gap in the log means frames were dropped.
    pub id: u64,
    /// When the source captured it (its hand-over less its [`Captured::age`]).
    pub captured: Instant,
    /// When the source handed it over (it waits in the queue from then).
    pub queued: Instant,
    pub captured_unix_us: u64,
    pub name: Option<String>,
    pub data: FrameData,
}

/// Microseconds since the Unix epoch, now.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
