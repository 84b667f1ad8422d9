//! Pictures of the methods' maps: the signed heatmap of a weight map, the
//! CAM-style blend (the paper's map kind (iii)), a gradient response as an
//! image, and the comparison grid of `explain --method all` (the paper's
//! Fig. 10: the input, then for each method its weight map and its visual
//! map, captioned with the embedded font).

use image::{Rgb, RgbImage};
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::font::{self, FAMILY};

/// The jet colour map at `t` in [0, 1] (blue, cyan, yellow, red).
pub fn jet(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let ramp = |x: f32| (1.5 - (4.0 * t - x).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// The CAM-style blend: the map min-max normalised, jet-coloured, then
/// `0.7 x colour + 0.2 x image` (`image` RGB, the map at its size).
pub fn cam_blend(map: &[f32], image: &RgbImage) -> RgbImage {
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let span = (hi - lo).max(f32::MIN_POSITIVE);
    let w = image.width();
    RgbImage::from_fn(w, image.height(), |x, y| {
        let v = map[(y * w + x) as usize];
        let c = jet((v - lo) / span);
        let p = image.get_pixel(x, y).0;
        let mix = |k: usize| (255.0 * 0.7 * c[k] + 0.2 * p[k] as f32).round().min(255.0) as u8;
        Rgb([mix(0), mix(1), mix(2)])
    })
}

/// A signed response `[D, R, C]` (D = 1 or 3) as an image: `0.5 + 0.5 x
/// v / max |v|` per value, grey for one channel.
pub fn response_image(v: &[f32], d: usize, r: usize, c: usize) -> RgbImage {
    let m = v
        .iter()
        .fold(0f32, |m, &x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    let hw = r * c;
    let byte = |x: f32| (255.0 * (0.5 + 0.5 * x / m)).round().clamp(0.0, 255.0) as u8;
    RgbImage::from_fn(c as u32, r as u32, |x, y| {
        let i = y as usize * c + x as usize;
        let ch = |k: usize| byte(v[(k % d) * hw + i]);
        Rgb([ch(0), ch(1), ch(2)])
    })
}

/// One method's column pair in the grid.
pub struct GridColumn<'a> {
    pub title: &'a str,
    pub weight: &'a RgbImage,
    pub visual: &'a RgbImage,
}

const TILE_MIN: usize = 96;
const GAP: usize = 6;
const HEAD_H: usize = 34;
const TITLE_H: usize = 34;

/// The comparison grid: `caption` on top, then the input and each method's
/// weight and visual maps side by side, titled.
pub fn grid(caption: &str, input: &RgbImage, columns: &[GridColumn]) -> Result<RgbImage> {
    let (c, r) = (input.width() as usize, input.height() as usize);
    let zoom = (TILE_MIN / r.max(c)).max(1);
    let (tw, th) = (c * zoom, r * zoom);
    let tiles = 1 + 2 * columns.len();
    let width = (GAP + tiles * (tw + GAP)).max(360);
    let height = HEAD_H + TITLE_H + th + GAP;
    let mut out = RgbImage::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    let y0 = HEAD_H + TITLE_H;
    blit(&mut out, input, GAP, y0, zoom);
    for (k, col) in columns.iter().enumerate() {
        let x = GAP + (1 + 2 * k) * (tw + GAP);
        blit(&mut out, col.weight, x, y0, zoom);
        blit(&mut out, col.visual, x + tw + GAP, y0, zoom);
    }
    font::register()?;
    draw_text(&mut out, caption, columns, tw)
        .map_err(|e| Error::Runtime(format!("comparison grid: drawing text failed: {e}")))?;
    Ok(out)
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw_text(out: &mut RgbImage, caption: &str, columns: &[GridColumn], tw: usize) -> Drawn {
    let (w, h) = out.dimensions();
    let root = BitMapBackend::with_buffer(out.as_mut(), (w, h)).into_drawing_area();
    let head = (FAMILY, 15).into_font().color(&BLACK);
    let small = (FAMILY, 12).into_font().color(&RGBColor(60, 60, 60));
    root.draw_text(caption, &head, (GAP as i32, 8))?;
    let y = HEAD_H as i32;
    root.draw_text("input", &head, (GAP as i32, y))?;
    for (k, col) in columns.iter().enumerate() {
        let x = (GAP + (1 + 2 * k) * (tw + GAP)) as i32;
        root.draw_text(col.title, &head, (x, y))?;
        root.draw_text("weight", &small, (x, y + 17))?;
        root.draw_text("visual", &small, (x + (tw + GAP) as i32, y + 17))?;
    }
    root.present()?;
    Ok(())
}

/// Copies `tile` into `out` at (x0, y0), each pixel `zoom` x `zoom`.
fn blit(out: &mut RgbImage, tile: &RgbImage, x0: usize, y0: usize, zoom: usize) {
    for y in 0..tile.height() as usize * zoom {
        for x in 0..tile.width() as usize * zoom {
            let p = *tile.get_pixel((x / zoom) as u32, (y / zoom) as u32);
            out.put_pixel((x0 + x) as u32, (y0 + y) as u32, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red_and_the_blend_weights_are_seven_and_two_tenths() {
        assert_eq!(jet(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(jet(0.5), [0.5, 1.0, 0.5]);
        assert_eq!(jet(1.0), [0.5, 0.0, 0.0]);
        let img = RgbImage::from_pixel(2, 1, Rgb([100, 100, 100]));
        let b = cam_blend(&[0.0, 1.0], &img);
        // Lowest: 0.7 x (0, 0, 127.5) + 20; highest: 0.7 x (127.5, 0, 0) + 20.
        assert_eq!(b.get_pixel(0, 0).0, [20, 20, 109]);
        assert_eq!(b.get_pixel(1, 0).0, [109, 20, 20]);
    }
}
