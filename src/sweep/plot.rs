//! Line plots as PNG files: drawn by plotters into a memory buffer, text in
//! the embedded font ([`crate::font`]).

use plotters::prelude::*;
use std::path::Path;

use crate::data::image_io::save_rgb;
use crate::error::{Error, Result};
use crate::font::{self, FAMILY};

/// Width and height of every plot, in pixels.
pub const SIZE: (u32, u32) = (640, 480);

/// One curve on the unit square.
pub struct Plot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub points: &'a [(f64, f64)],
    /// Draw the chance diagonal (ROC).
    pub diagonal: bool,
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(buf: &mut [u8], p: &Plot) -> Drawn {
    let root = BitMapBackend::with_buffer(buf, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(p.title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
    chart
        .configure_mesh()
        .x_desc(p.x_label)
        .y_desc(p.y_label)
        .label_style((FAMILY, 14))
        .draw()?;
    if p.diagonal {
        let grey = RGBColor(170, 170, 170);
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], grey))?;
    }
    let line = BLUE.stroke_width(2);
    chart.draw_series(LineSeries::new(p.points.iter().copied(), line))?;
    root.present()?;
    Ok(())
}

/// Draws `p` into the PNG file `path` ([`SIZE`]).
pub fn png(path: &Path, p: &Plot) -> Result<()> {
    font::register()?;
    let (w, h) = (SIZE.0 as usize, SIZE.1 as usize);
    let mut buf = vec![0u8; w * h * 3];
    draw(&mut buf, p)
        .map_err(|e| Error::Runtime(format!("{}: plotting failed: {e}", path.display())))?;
    save_rgb(path, w, h, buf)
}
