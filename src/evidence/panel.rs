//! `panel.png`: what a reviewer needs of a decision at a glance.
//!
//! ```text
//! frame 42 · 2026-12-04 03:37:00.123 UTC · cell_0042.png
//! decided crack: score 0.1234, p 0.912, margin 0.0567 · runner-up ok: score 0.0667, p 0.088
//!             input    CCM on input    CWM    CCM +    CCM -
//! crack       [  ]     [  ]            [  ]   [  ]     [  ]
//! ok                   [  ]            [  ]   [  ]     [  ]
//! ```
//!
//! "CCM on input" blends the CCM summed over channels (red where it raises
//! the class score, blue where it lowers it, strength by magnitude) into the
//! grey input. Text is drawn with the embedded font ([`crate::font`]).

use image::{Rgb, RgbImage};
use plotters::prelude::*;

use super::{QuantCcm, Seen};
use crate::data::image_io::planar_to_dynamic;
use crate::error::{Error, Result};
use crate::font::{self, FAMILY};

/// Diverging colour map: -1 blue, 0 white, +1 red.
fn diverging(t: f32) -> [u8; 3] {
    let t = t.clamp(-1.0, 1.0);
    let fade = |a: f32| (255.0 * (1.0 - a)).round() as u8;
    if t >= 0.0 {
        [255, fade(t), fade(t)]
    } else {
        [fade(-t), fade(-t), 255]
    }
}

/// A class weight map as a heatmap on a symmetric scale.
pub fn heatmap(map: &[f32], rows: usize, cols: usize) -> RgbImage {
    let m = map
        .iter()
        .fold(0f32, |m, &v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let data: Vec<u8> = map.iter().flat_map(|&v| diverging(v / m)).collect();
    RgbImage::from_raw(cols as u32, rows as u32, data).expect("sized")
}

/// One class's row of the panel.
pub struct ClassRow<'a> {
    pub class: &'a str,
    pub score: f32,
    pub probability: f32,
    pub cwm: &'a [f32],
    pub q: &'a QuantCcm,
}

const TILE_MIN: usize = 128;
const GAP: usize = 6;
const LABEL_W: usize = 120;
const HEAD_H: usize = 66;
const COLUMN_H: usize = 20;

/// Renders the panel: `rows[0]` is the decided class, `rows[1]` (if any) the
/// runner-up; `margin` the decided score minus the runner-up's.
pub fn panel(seen: &Seen, rows: &[ClassRow], margin: f32) -> Result<RgbImage> {
    let input = seen.input;
    let (r, c) = (input.rows, input.cols);
    let zoom = (TILE_MIN / r.max(c)).max(1);
    let (tw, th) = (c * zoom, r * zoom);
    let width = LABEL_W + 5 * tw + 4 * GAP + GAP;
    let height = HEAD_H + COLUMN_H + rows.len() * (th + GAP) + GAP;
    let mut out = RgbImage::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    let input_rgb = planar_to_dynamic(input).to_rgb8();
    for (k, row) in rows.iter().enumerate() {
        let y0 = HEAD_H + COLUMN_H + k * (th + GAP);
        let tiles = [
            (k == 0).then(|| input_rgb.clone()),
            Some(overlay(&input_rgb, row.q, input.channels)),
            Some(heatmap(row.cwm, r, c)),
            Some(part(&row.q.pos, input.channels, r, c, [200, 0, 0])),
            Some(part(&row.q.neg, input.channels, r, c, [0, 0, 200])),
        ];
        for (t, tile) in tiles.iter().enumerate() {
            if let Some(tile) = tile {
                blit(&mut out, tile, LABEL_W + t * (tw + GAP), y0, zoom);
            }
        }
    }
    font::register()?;
    let text = lines(seen, rows, margin);
    draw_text(&mut out, &text, rows, (tw, th))
        .map_err(|e| Error::Runtime(format!("evidence panel: drawing text failed: {e}")))?;
    Ok(out)
}

/// The caption's two lines.
fn lines(seen: &Seen, rows: &[ClassRow], margin: f32) -> [String; 2] {
    let mut first = Vec::new();
    if let Some(id) = seen.frame_id {
        first.push(format!("frame {id}"));
    }
    if let Some(us) = seen.captured_unix_us {
        first.push(utc(us));
    }
    if let Some(name) = seen.name {
        first.push(name.to_string());
    }
    let describe = |row: &ClassRow| {
        format!(
            "{}: score {:.4}, p {:.3}",
            row.class, row.score, row.probability
        )
    };
    let mut second = format!("decided {}", describe(&rows[0]));
    if let Some(ru) = rows.get(1) {
        second.push_str(&format!(
            ", margin {margin:.4} · runner-up {}",
            describe(ru)
        ));
    }
    [first.join(" · "), second]
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` of microseconds since the epoch.
fn utc(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        us / 1000 % 1000
    )
}

type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw_text(
    out: &mut RgbImage,
    text: &[String; 2],
    rows: &[ClassRow],
    tile: (usize, usize),
) -> Drawn {
    let (w, h) = out.dimensions();
    let (tw, th) = tile;
    let root = BitMapBackend::with_buffer(out.as_mut(), (w, h)).into_drawing_area();
    let head = (FAMILY, 15).into_font().color(&BLACK);
    root.draw_text(&text[0], &head, (GAP as i32, 8))?;
    root.draw_text(&text[1], &head, (GAP as i32, 32))?;
    let small = (FAMILY, 13).into_font().color(&RGBColor(60, 60, 60));
    let heads = ["input", "CCM on input", "CWM", "CCM +", "CCM -"];
    for (t, name) in heads.iter().enumerate() {
        let x = LABEL_W + t * (tw + GAP);
        root.draw_text(name, &small, (x as i32, HEAD_H as i32))?;
    }
    for (k, row) in rows.iter().enumerate() {
        let y = HEAD_H + COLUMN_H + k * (th + GAP) + th / 2 - 8;
        let label = if k == 0 { "decided" } else { "runner-up" };
        root.draw_text(row.class, &head, (GAP as i32, y as i32 - 10))?;
        root.draw_text(label, &small, (GAP as i32, y as i32 + 10))?;
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

/// A CCM part (16-bit, `[D, R, C]`) as one colour's strength per pixel.
fn part(v: &[u16], d: usize, r: usize, c: usize, colour: [u8; 3]) -> RgbImage {
    let hw = r * c;
    let m = v.iter().copied().max().unwrap_or(0).max(1) as f32;
    RgbImage::from_fn(c as u32, r as u32, |x, y| {
        let i = y as usize * c + x as usize;
        let a = (0..d).map(|ch| v[ch * hw + i] as f32).fold(0f32, f32::max) / m;
        let mix = |k: usize| (255.0 * (1.0 - a) + colour[k] as f32 * a).round() as u8;
        Rgb([mix(0), mix(1), mix(2)])
    })
}

/// The signed CCM, summed over channels, blended into the grey input: red
/// raises the score, blue lowers it, opacity by magnitude (at most 0.75).
fn overlay(input: &RgbImage, q: &QuantCcm, d: usize) -> RgbImage {
    let (c, r) = (input.width() as usize, input.height() as usize);
    let hw = r * c;
    let signed: Vec<f64> = (0..hw)
        .map(|i| {
            (0..d)
                .map(|ch| {
                    q.pos[ch * hw + i] as f64 * q.scale_pos
                        - q.neg[ch * hw + i] as f64 * q.scale_neg
                })
                .sum()
        })
        .collect();
    let m = signed
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    RgbImage::from_fn(c as u32, r as u32, |x, y| {
        let i = y as usize * c + x as usize;
        let p = input.get_pixel(x, y).0;
        let grey = (p[0] as f32 * 0.3 + p[1] as f32 * 0.59 + p[2] as f32 * 0.11) * 0.8 + 40.0;
        let t = (signed[i] / m) as f32;
        let colour = if t >= 0.0 {
            [220.0, 30.0, 30.0]
        } else {
            [30.0, 60.0, 220.0]
        };
        let a = 0.75 * t.abs();
        let mix = |k: usize| (grey * (1.0 - a) + colour[k] * a).round().clamp(0.0, 255.0) as u8;
        Rgb([mix(0), mix(1), mix(2)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image_io::Planar;

    fn q(v: u16) -> QuantCcm {
        QuantCcm {
            scale_pos: 1.0,
            scale_neg: 1.0,
            pos: vec![v; 16],
            neg: vec![0; 16],
        }
    }

    /// Dark pixels (text) in rows `y0..y1`.
    fn inked(img: &RgbImage, y0: u32, y1: u32) -> usize {
        (y0..y1)
            .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count()
    }

    #[test]
    fn the_caption_is_drawn_and_the_runner_up_has_its_row() {
        let input = Planar {
            channels: 1,
            rows: 4,
            cols: 4,
            data: vec![128; 16],
        };
        let seen = Seen {
            frame_id: Some(42),
            captured_unix_us: Some(1_796_355_420_123_000),
            name: Some("cell.png"),
            ..Seen::input(&input)
        };
        let cwm = vec![0.5f32; 16];
        let (a, b) = (q(3), q(1));
        let row = |class, q| ClassRow {
            class,
            score: 0.1,
            probability: 0.5,
            cwm: &cwm,
            q,
        };
        let one = panel(&seen, &[row("crack", &a)], 0.0).unwrap();
        let two = panel(&seen, &[row("crack", &a), row("ok", &b)], 0.2).unwrap();
        assert_eq!(two.width(), one.width());
        assert_eq!(two.height() - one.height(), (128 + GAP) as u32);
        assert!(inked(&two, 0, HEAD_H as u32) > 200, "caption text");
        let [first, second] = lines(&seen, &[row("crack", &a), row("ok", &b)], 0.2);
        assert_eq!(first, "frame 42 · 2026-12-04 03:37:00.123 UTC · cell.png");
        assert!(
            second.contains("decided crack") && second.contains("runner-up ok"),
            "{second}"
        );
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        // 2026-12-04 03:37:00.123 UTC.
        assert_eq!(utc(1_796_355_420_123_000), "2026-12-04 03:37:00.123 UTC");
        // A leap day.
        assert_eq!(utc(951_782_400_000_000), "2000-02-29 00:00:00.000 UTC");
    }
}
