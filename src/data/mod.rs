//! Images in and out, labelled data sets, synthetic data.

pub mod dataset;
pub mod image_io;
pub mod jpeg;
pub mod labelled;
pub mod paint;
pub mod pretrain;
pub mod synth;

pub use dataset::{Dataset, Sample, Split};
pub use image_io::Planar;
pub use labelled::{load_images, ImageSet};
