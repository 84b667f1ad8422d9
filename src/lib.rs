//! gcm-inspect: quality inspection with Generative Contribution Mappings.
//!
//! A GCM network produces one full-resolution weight map per class (CWM); the
//! class contribution map (CCM) is `CWM x input`, and its plain mean is the
//! class score. The evidence image therefore reproduces the decision exactly,
//! which this product checks for every decision it logs.

pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod decision;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod evidence;
pub mod explain;
pub mod export;
pub mod font;
pub mod fs;
pub mod gpu;
pub mod heap;
pub mod methods;
pub mod model;
pub mod outputs;
pub mod pipeline;
pub mod preprocess;
#[cfg(test)]
mod proptests;
pub mod review;
pub mod rng;
pub mod schema;
pub mod sweep;
pub mod train;
pub mod verdict;

pub use error::{Error, Result};
