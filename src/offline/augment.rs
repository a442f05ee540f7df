//! Training augmentation that moves boxes and clicks with the images (MODEL.md; the
//! release does not). Satellite: random resized crop that keeps the whole box, flips,
//! rot90, colour jitter. Query: colour jitter and a small affine (rotation, scale,
//! translation) with the click moved through the same transform. Deterministic for a
//! given RNG; evaluation uses no augmentation.

use image::{imageops, Rgb, RgbImage};
use rand::Rng;

/// Box (x1, y1, x2, y2) in pixels.
pub type Bx = [f64; 4];

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    pub crop_prob: f64,
    /// Smallest crop side as a fraction of the image side.
    pub crop_min_scale: f64,
    pub flip_prob: f64,
    pub rot90_prob: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub query_rotate_deg: f64,
    pub query_scale: f64,
    pub query_translate: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            crop_prob: 0.3,
            crop_min_scale: 0.7,
            flip_prob: 0.5,
            rot90_prob: 0.5,
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            query_rotate_deg: 10.0,
            query_scale: 0.1,
            query_translate: 0.08,
        }
    }
}

/// Satellite image and its target box.
pub fn augment_sat(img: &RgbImage, b: Bx, cfg: &AugmentConfig, rng: &mut impl Rng) -> (RgbImage, Bx) {
    let (img, boxes) = augment_sat_boxes(img, &[b], cfg, rng);
    (img, boxes[0])
}

/// Satellite image and the boxes of several targets on it (prompts that share the chip):
/// one transform for all, the crop keeps every box. `boxes` must not be empty.
pub fn augment_sat_boxes(img: &RgbImage, boxes: &[Bx], cfg: &AugmentConfig, rng: &mut impl Rng) -> (RgbImage, Vec<Bx>) {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let (mut img, mut bs) = (img.clone(), boxes.to_vec());
    let map = |bs: &mut Vec<Bx>, f: &dyn Fn(Bx) -> Bx| bs.iter_mut().for_each(|b| *b = f(*b));
    if rng.gen_bool(cfg.crop_prob.clamp(0.0, 1.0)) {
        // a square-ish crop of scale s that contains every box, resized back to (w, h)
        let b = bs.iter().fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |u, b| {
            [u[0].min(b[0]), u[1].min(b[1]), u[2].max(b[2]), u[3].max(b[3])]
        });
        let s = rng.gen_range(cfg.crop_min_scale.min(1.0)..=1.0);
        let (cw, ch) = ((w * s).max(b[2] - b[0] + 2.0).min(w), (h * s).max(b[3] - b[1] + 2.0).min(h));
        let x0 = rng.gen_range((b[2] - cw).max(0.0)..=b[0].min(w - cw).max((b[2] - cw).max(0.0)));
        let y0 = rng.gen_range((b[3] - ch).max(0.0)..=b[1].min(h - ch).max((b[3] - ch).max(0.0)));
        // Whole pixels that still contain the boxes: floor the start, ceil the end.
        let (x1, y1) = ((x0 + cw).ceil().min(w), (y0 + ch).ceil().min(h));
        let (x0, y0) = (x0.floor(), y0.floor());
        let (cw, ch) = ((x1 - x0).max(1.0), (y1 - y0).max(1.0));
        let crop = imageops::crop_imm(&img, x0 as u32, y0 as u32, cw as u32, ch as u32).to_image();
        img = imageops::resize(&crop, w as u32, h as u32, imageops::FilterType::Triangle);
        let (sx, sy) = (w / cw, h / ch);
        map(&mut bs, &|b| [(b[0] - x0) * sx, (b[1] - y0) * sy, (b[2] - x0) * sx, (b[3] - y0) * sy]);
    }
    if rng.gen_bool(cfg.flip_prob.clamp(0.0, 1.0)) {
        img = imageops::flip_horizontal(&img);
        map(&mut bs, &|b| [w - b[2], b[1], w - b[0], b[3]]);
    }
    if rng.gen_bool(cfg.flip_prob.clamp(0.0, 1.0)) {
        img = imageops::flip_vertical(&img);
        map(&mut bs, &|b| [b[0], h - b[3], b[2], h - b[1]]);
    }
    if w == h && rng.gen_bool(cfg.rot90_prob.clamp(0.0, 1.0)) {
        // 90° clockwise: (x, y) -> (h − y, x)
        img = imageops::rotate90(&img);
        map(&mut bs, &|b| [h - b[3], b[0], h - b[1], b[2]]);
    }
    colour_jitter(&mut img, cfg, rng);
    (img, bs)
}

/// Query image and its click (x, y).
pub fn augment_query(
    img: &RgbImage,
    click: (f64, f64),
    cfg: &AugmentConfig,
    rng: &mut impl Rng,
) -> (RgbImage, (f64, f64)) {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let ang = rng.gen_range(-cfg.query_rotate_deg..=cfg.query_rotate_deg).to_radians();
    let sc = 1.0 + rng.gen_range(-cfg.query_scale..=cfg.query_scale);
    let (mut tx, mut ty) = (
        rng.gen_range(-cfg.query_translate..=cfg.query_translate) * w,
        rng.gen_range(-cfg.query_translate..=cfg.query_translate) * h,
    );
    let (cx, cy) = (w / 2.0, h / 2.0);
    let fwd = |x: f64, y: f64, tx: f64, ty: f64| {
        let (dx, dy) = (x - cx, y - cy);
        (cx + sc * (ang.cos() * dx - ang.sin() * dy) + tx, cy + sc * (ang.sin() * dx + ang.cos() * dy) + ty)
    };
    // keep the click inside the image with a margin: undo the translation if needed
    let (nx, ny) = fwd(click.0, click.1, tx, ty);
    if !(2.0..w - 2.0).contains(&nx) || !(2.0..h - 2.0).contains(&ny) {
        tx = 0.0;
        ty = 0.0;
    }
    let (nx, ny) = fwd(click.0, click.1, tx, ty);
    if !(0.0..w).contains(&nx) || !(0.0..h).contains(&ny) {
        let mut out = img.clone();
        colour_jitter(&mut out, cfg, rng);
        return (out, click);
    }
    let out = warp_similarity(img, ang, sc, tx, ty);
    let mut out = out;
    colour_jitter(&mut out, cfg, rng);
    (out, (nx, ny))
}

/// Output pixel p samples the input at the inverse similarity transform (bilinear,
/// black outside).
fn warp_similarity(img: &RgbImage, ang: f64, sc: f64, tx: f64, ty: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let (c, s) = (ang.cos() / sc, ang.sin() / sc);
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 + 0.5 - cx - tx, y as f64 + 0.5 - cy - ty);
        let (sx, sy) = (cx + c * dx + s * dy - 0.5, cy - s * dx + c * dy - 0.5);
        bilinear(img, sx, sy)
    })
}

pub fn bilinear(img: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if x < -1.0 || y < -1.0 || x > w as f64 || y > h as f64 {
        return Rgb([0, 0, 0]);
    }
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let px = |xx: i64, yy: i64| -> [f64; 3] {
        if xx < 0 || yy < 0 || xx >= w || yy >= h {
            return [0.0; 3];
        }
        let p = img.get_pixel(xx as u32, yy as u32).0;
        [p[0] as f64, p[1] as f64, p[2] as f64]
    };
    let (a, b, c, d) = (px(x0, y0), px(x0 + 1, y0), px(x0, y0 + 1), px(x0 + 1, y0 + 1));
    let mut o = [0u8; 3];
    for k in 0..3 {
        let v = (a[k] * (1.0 - fx) + b[k] * fx) * (1.0 - fy) + (c[k] * (1.0 - fx) + d[k] * fx) * fy;
        o[k] = v.round().clamp(0.0, 255.0) as u8;
    }
    Rgb(o)
}

/// Brightness, contrast and saturation jitter in one pass.
pub fn colour_jitter(img: &mut RgbImage, cfg: &AugmentConfig, rng: &mut impl Rng) {
    let br = 1.0 + rng.gen_range(-cfg.brightness..=cfg.brightness);
    let ct = 1.0 + rng.gen_range(-cfg.contrast..=cfg.contrast);
    let sa = 1.0 + rng.gen_range(-cfg.saturation..=cfg.saturation);
    let n = (img.width() * img.height()).max(1) as f64;
    let mean = img.pixels().map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).sum::<f64>() / n;
    for p in img.pixels_mut() {
        let g = 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
        for k in 0..3 {
            let v = p[k] as f64 * br;
            let v = (g * br) + sa * (v - g * br);
            let v = mean * br + ct * (v - mean * br);
            p[k] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A white rectangle on black: after augmentation the box must still frame it.
    fn boxed_image(w: u32, h: u32, b: [u32; 4]) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            if x >= b[0] && x < b[2] && y >= b[1] && y < b[3] {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        })
    }

    #[test]
    fn sat_box_moves_with_the_image() {
        let cfg =
            AugmentConfig { crop_prob: 1.0, brightness: 0.0, contrast: 0.0, saturation: 0.0, ..Default::default() };
        for seed in 0..12 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let img = boxed_image(128, 128, [20, 70, 50, 90]);
            let (out, b) = augment_sat(&img, [20.0, 70.0, 50.0, 90.0], &cfg, &mut rng);
            // centre of the new box is white, a point well outside it is black
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            assert!(out.get_pixel(cx as u32, cy as u32)[0] > 200, "seed {seed}: box {b:?}");
            let (ox, oy) = (((b[2] + 6.0) as u32).min(127), cy as u32);
            if b[2] + 6.0 < 127.0 {
                assert!(out.get_pixel(ox, oy)[0] < 60, "seed {seed}: outside is not black");
            }
            assert!(b[0] >= -0.5 && b[1] >= -0.5 && b[2] <= 128.5 && b[3] <= 128.5);
        }
    }

    #[test]
    fn boxes_sharing_a_chip_move_together_and_all_survive_the_crop() {
        // A red and a green rectangle far apart: one transform for both, each box still
        // frames its own colour.
        let cfg =
            AugmentConfig { crop_prob: 1.0, brightness: 0.0, contrast: 0.0, saturation: 0.0, ..Default::default() };
        let (r, g) = ([8u32, 10, 30, 24], [96u32, 100, 120, 118]);
        let img = RgbImage::from_fn(128, 128, |x, y| {
            let inside = |b: [u32; 4]| x >= b[0] && x < b[2] && y >= b[1] && y < b[3];
            Rgb(if inside(r) {
                [255, 0, 0]
            } else if inside(g) {
                [0, 255, 0]
            } else {
                [0, 0, 0]
            })
        });
        let f = |b: [u32; 4]| b.map(f64::from);
        for seed in 0..12 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (out, bs) = augment_sat_boxes(&img, &[f(r), f(g)], &cfg, &mut rng);
            for (b, ch) in bs.iter().zip([0usize, 1]) {
                let px = out.get_pixel(((b[0] + b[2]) / 2.0) as u32, ((b[1] + b[3]) / 2.0) as u32);
                assert!(px[ch] > 200 && px[1 - ch] < 60, "seed {seed}: box {b:?} shows {px:?}");
                assert!(b[0] >= -0.5 && b[1] >= -0.5 && b[2] <= 128.5 && b[3] <= 128.5, "seed {seed}: {b:?}");
            }
        }
    }

    #[test]
    fn query_click_moves_with_the_image() {
        let cfg = AugmentConfig { brightness: 0.0, contrast: 0.0, saturation: 0.0, ..Default::default() };
        for seed in 0..12 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let img = boxed_image(96, 96, [60, 20, 72, 32]);
            let (out, c) = augment_query(&img, (66.0, 26.0), &cfg, &mut rng);
            assert!(out.get_pixel(c.0 as u32, c.1 as u32)[0] > 200, "seed {seed}: click {c:?}");
        }
    }
}
