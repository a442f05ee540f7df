//! Image → model input, in one pass over the pixels: ImageNet normalisation of RGB
//! and the click-prior channel (SMGEO_SPEC §3, DetGeo's encoding):
//! m[i, j] = (1 − √((i−cy)² + (j−cx)²) / √(H² + W²))², cx = ⌊x⌋, cy = ⌊y⌋, not normalised.

use tch::Tensor;

use super::{ModelError, Result};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Check a click against the query size; returns the truncated integer click.
pub fn check_click(x: f64, y: f64, w: i64, h: i64) -> Result<(i64, i64)> {
    if !(x.is_finite() && y.is_finite()) || x < 0.0 || y < 0.0 || x >= w as f64 || y >= h as f64 {
        return Err(ModelError::Input(format!("click ({x}, {y}) lies outside the {w}×{h} query image")));
    }
    Ok((x as i64, y as i64))
}

/// Click prior (H, W) as a flat row-major vector.
pub fn click_prior(h: i64, w: i64, cx: i64, cy: i64) -> Vec<f32> {
    let diag = ((h * h + w * w) as f64).sqrt();
    let mut m = Vec::with_capacity((h * w) as usize);
    for i in 0..h {
        for j in 0..w {
            let d = (((i - cy) * (i - cy) + (j - cx) * (j - cx)) as f64).sqrt();
            m.push((1.0 - d / diag).powi(2) as f32);
        }
    }
    m
}

/// RGB8 interleaved (row stride `stride` bytes) → (C, H, W) planar float, normalised.
/// With `click`, a 4th channel holds the click prior.
pub fn to_input(rgb: &[u8], w: i64, h: i64, stride: usize, click: Option<(f64, f64)>) -> Result<Tensor> {
    let (wu, hu) = (w as usize, h as usize);
    if w <= 0 || h <= 0 || stride < 3 * wu || rgb.len() < stride * (hu - 1) + 3 * wu {
        return Err(ModelError::Input(format!(
            "image buffer of {} bytes too small for {w}×{h} RGB, stride {stride}",
            rgb.len()
        )));
    }
    let plane = wu * hu;
    let chans = if click.is_some() { 4 } else { 3 };
    let mut out = vec![0f32; chans * plane];
    for y in 0..hu {
        let row = &rgb[y * stride..y * stride + 3 * wu];
        for (x, px) in row.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + y * wu + x] = (px[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
    if let Some((cx, cy)) = click {
        let (cx, cy) = check_click(cx, cy, w, h)?;
        out[3 * plane..].copy_from_slice(&click_prior(h, w, cx, cy));
    }
    Ok(Tensor::from_slice(&out).view([chans as i64, h, w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn click_prior_is_one_at_click_and_falls_with_distance() {
        let m = click_prior(4, 3, 1, 2);
        assert_eq!(m[2 * 3 + 1], 1.0);
        let diag = 5f64;
        // corner (0, 0): distance √(4+1)
        let want = (1.0 - 5f64.sqrt() / diag).powi(2) as f32;
        assert!((m[0] - want).abs() < 1e-7);
    }

    #[test]
    fn input_normalises_and_rejects_bad_click() {
        let rgb = [255u8, 0, 128, 0, 0, 0];
        let t = to_input(&rgb, 2, 1, 6, Some((1.7, 0.2))).unwrap();
        assert_eq!(t.size(), vec![4, 1, 2]);
        let r = t.double_value(&[0, 0, 0]) as f32;
        assert!((r - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert_eq!(t.double_value(&[3, 0, 1]), 1.0);
        assert!(to_input(&rgb, 2, 1, 6, Some((2.0, 0.0))).is_err());
        assert!(to_input(&rgb, 3, 1, 6, None).is_err());
    }
}
