//! Images in and out, labelled data sets, synthetic data.

pub mod dataset;
pub mod image_io;
pub mod paint;
pub mod synth;

pub use dataset::{Dataset, Sample, Split};
pub use image_io::Planar;
