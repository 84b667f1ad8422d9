//! The one font of the product's pictures (plots, evidence panels): DejaVu
//! Sans embedded in the binary (assets/fonts/), registered with plotters
//! once, so drawing text needs no system font, fontconfig or display.

use std::sync::OnceLock;

use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// The family name to draw text with, after [`register`].
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font (once; later calls return the first result).
pub fn register() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the embedded font does not parse".to_string())
        })
        .clone()
        .map_err(Error::Runtime)
}
