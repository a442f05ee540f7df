//! Minimal PNG bar charts for reports, text drawn with the public-domain 8×8 bitmap
//! font of the `font8x8` crate (no system fonts needed).

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

/// Draw `text` at (x, y) with integer `scale`.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (x + (i as i64 * 8 + col) * scale + dx, y + row as i64 * scale + dy);
                            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                                img.put_pixel(px as u32, py as u32, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Horizontal bar chart of values in [0, 1] (shown as %), one row per label.
pub fn bar_chart(title: &str, rows: &[(String, f64)]) -> RgbImage {
    let (row_h, label_w, bar_w) = (22i64, 200i64, 360i64);
    let h = 40 + row_h * rows.len().max(1) as i64 + 10;
    let mut img = RgbImage::from_pixel((label_w + bar_w + 80) as u32, h as u32, Rgb([255, 255, 255]));
    let black = Rgb([20, 20, 20]);
    text(&mut img, 10, 10, title, 2, black);
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 40 + i as i64 * row_h;
        let short: String = label.chars().take(24).collect();
        text(&mut img, 8, y + 7, &short, 1, black);
        let len = (v.clamp(0.0, 1.0) * bar_w as f64) as i64;
        for yy in y + 3..y + row_h - 3 {
            for xx in label_w..label_w + len {
                img.put_pixel(xx as u32, yy as u32, Rgb([60, 110, 200]));
            }
        }
        text(&mut img, label_w + len + 6, y + 7, &format!("{:.1}%", 100.0 * v), 1, black);
    }
    img
}
