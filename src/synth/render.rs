//! Nadir, north-up orthographic rendering of a [`World`] ("satellite" imagery) and the
//! photometric [`Appearance`] that makes two views of one scene differ.
//!
//! Pipeline: ground cover → water → roads → markings → shadows (from casters, in the
//! appearance's sun direction) → objects → details, rasterised by scanline at 2× supersampling
//! into a float canvas, box-downsampled, then [`finish`]ed: colour gain, saturation,
//! contrast/brightness, haze, Gaussian blur, sensor noise, vignette. Only shapes whose bbox
//! overlaps the view (widened by the longest shadow) are visited, via the world's grid index.
//!
//! Image geometry: pixel (i, j) of an ortho image at (x0, y0, gsd) covers world
//! x ∈ [x0 + i·gsd, x0 + (i+1)·gsd], y ∈ [y0 − (j+1)·gsd, y0 − j·gsd]; (x0, y0) is the
//! north-west corner in metres.

use super::geom::convex_hull;
use super::raster::{hash01, value_noise, Canvas};
use super::world::{Layer, Material, World};
use image::{Rgb, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Lighting, colour and sensor settings of one view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Appearance {
    /// Compass azimuth of the sun (degrees from north, clockwise); shadows point away from it.
    pub sun_azimuth_deg: f64,
    /// Shadow length per metre of height (1 / tan(sun elevation)).
    pub shadow_len: f64,
    /// 0 = no shadow, 1 = black shadow.
    pub shadow_strength: f32,
    /// Additive brightness offset (0–255 scale).
    pub brightness: f32,
    /// Contrast factor around mid-grey.
    pub contrast: f32,
    /// Per-channel RGB gain (colour cast).
    pub gain: [f32; 3],
    /// Saturation factor (1 = unchanged).
    pub saturation: f32,
    /// Vegetation dryness 0 (green) … 1 (brown, late summer).
    pub dryness: f32,
    /// Snow cover 0 … 1 on ground and vegetation.
    pub snow: f32,
    /// Gaussian blur sigma in output pixels.
    pub blur_px: f32,
    /// Sensor noise standard deviation (0–255 scale).
    pub noise_sigma: f32,
    /// Atmospheric haze mix 0 … 1.
    pub haze: f32,
    /// Corner darkening 0 … 1 (lens vignette).
    pub vignette: f32,
    /// Seed of the sensor-noise pattern.
    pub noise_seed: u32,
}

impl Appearance {
    /// Neutral look: no colour change, no blur, no noise, sun from the south-east.
    pub fn neutral() -> Self {
        Appearance {
            sun_azimuth_deg: 135.0,
            shadow_len: 0.8,
            shadow_strength: 0.5,
            brightness: 0.0,
            contrast: 1.0,
            gain: [1.0; 3],
            saturation: 1.0,
            dryness: 0.0,
            snow: 0.0,
            blur_px: 0.0,
            noise_sigma: 0.0,
            haze: 0.0,
            vignette: 0.0,
            noise_seed: 0,
        }
    }

    /// Satellite-like: muted, slightly hazy and soft, any season.
    pub fn satellite(rng: &mut impl Rng) -> Self {
        let mut a = Self::random_common(rng);
        a.saturation = rng.gen_range(0.6..0.95);
        a.haze = rng.gen_range(0.03..0.18);
        a.blur_px = rng.gen_range(0.3..1.0);
        a.noise_sigma = rng.gen_range(1.0..4.0);
        a
    }

    /// Drone-like: crisper, more saturated and contrasty, sensor noise and vignette.
    pub fn drone(rng: &mut impl Rng) -> Self {
        let mut a = Self::random_common(rng);
        a.saturation = rng.gen_range(0.85..1.2);
        a.contrast = rng.gen_range(0.95..1.3);
        a.haze = rng.gen_range(0.0..0.08);
        a.blur_px = rng.gen_range(0.0..0.7);
        a.noise_sigma = rng.gen_range(2.0..7.0);
        a.vignette = rng.gen_range(0.05..0.35);
        a
    }

    fn random_common(rng: &mut impl Rng) -> Self {
        let snowy = rng.gen_bool(0.1);
        let g = |rng: &mut dyn rand::RngCore| rng.gen_range(0.88..1.12f32);
        Appearance {
            sun_azimuth_deg: rng.gen_range(90.0..270.0),
            shadow_len: rng.gen_range(0.4..1.2),
            shadow_strength: rng.gen_range(0.35..0.65),
            brightness: rng.gen_range(-20.0..20.0),
            contrast: rng.gen_range(0.85..1.15),
            gain: [g(rng), g(rng), g(rng)],
            saturation: 1.0,
            dryness: 0.8 * rng.gen_range(0.0..1.0f32).powi(2),
            snow: if snowy { rng.gen_range(0.3..0.8) } else { 0.0 },
            blur_px: 0.0,
            noise_sigma: 0.0,
            haze: 0.0,
            vignette: 0.0,
            noise_seed: rng.gen(),
        }
    }

    /// Horizontal unit vector (east, north) pointing towards the sun.
    pub fn sun_dir(&self) -> (f64, f64) {
        let a = self.sun_azimuth_deg.to_radians();
        (a.sin(), a.cos())
    }
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    std::array::from_fn(|k| a[k] * (1.0 - t) + b[k] * t)
}

fn scale(c: [f32; 3], f: f32) -> [f32; 3] {
    c.map(|v| v * f)
}

const SNOW: [f32; 3] = [232.0, 234.0, 240.0];

/// Colour of a material at world point (x, y), before the view's finishing.
fn material_color(m: &Material, a: &Appearance, x: f64, y: f64) -> [f32; 3] {
    let veg = |green: [f32; 3], dry: [f32; 3]| mix(green, dry, a.dryness);
    let c = match *m {
        Material::Grass => {
            let t = 0.8
                + 0.12 * value_noise(x / 2.3, y / 2.3, 1)
                + 0.1 * value_noise(x / 7.1, y / 7.1, 12)
                + 0.2 * value_noise(x / 37.0, y / 37.0, 2);
            return mix(scale(veg([88.0, 118.0, 58.0], [150.0, 138.0, 85.0]), t), SNOW, a.snow);
        }
        Material::Field { angle, tone } => {
            let (c, s) = (angle.cos() as f64, angle.sin() as f64);
            let stripe = if ((x * c + y * s) / 2.4).rem_euclid(1.0) < 0.5 { 1.08 } else { 0.9 };
            let base = [[118.0, 140.0, 62.0], [178.0, 158.0, 96.0], [96.0, 120.0, 56.0], [142.0, 112.0, 82.0]]
                [tone as usize % 4];
            let t = stripe * (0.85 + 0.25 * value_noise(x / 25.0, y / 25.0, 3));
            return mix(scale(veg(base, [170.0, 150.0, 100.0]), t), SNOW, a.snow);
        }
        Material::Tree => {
            let t = 0.55 + 0.7 * value_noise(x / 1.3, y / 1.3, 4);
            return mix(scale(veg([46.0, 78.0, 40.0], [105.0, 88.0, 48.0]), t), SNOW, a.snow * 0.4);
        }
        Material::Soil => scale([128.0, 104.0, 80.0], 0.85 + 0.3 * value_noise(x / 3.0, y / 3.0, 5)),
        Material::Sand => scale([186.0, 172.0, 138.0], 0.9 + 0.15 * value_noise(x / 2.0, y / 2.0, 6)),
        Material::Water => return scale([38.0, 66.0, 82.0], 0.9 + 0.15 * value_noise(x / 7.0, y / 3.0, 7)),
        Material::Asphalt => scale([72.0, 73.0, 77.0], 0.9 + 0.18 * hash01((x * 3.0) as i64, (y * 3.0) as i64, 8)),
        Material::Concrete => scale([168.0, 165.0, 156.0], 0.9 + 0.12 * value_noise(x, y, 9)),
        Material::Marking => return [228.0, 228.0, 222.0],
        Material::Roof { rgb, normal_az } => {
            let shade = match normal_az {
                Some(n) => {
                    let (sx, sy) = a.sun_dir();
                    1.0 + 0.3 * ((n as f64).cos() * sx + (n as f64).sin() * sy) as f32
                }
                None => 1.0,
            };
            let c = scale(rgb.map(f32::from), shade * (0.95 + 0.08 * value_noise(x / 0.8, y / 0.8, 10)));
            return if normal_az.is_none() { mix(c, SNOW, a.snow * 0.7) } else { c };
        }
        Material::Paint { rgb } => return rgb.map(f32::from),
        Material::Pool => return scale([62.0, 168.0, 192.0], 0.95 + 0.1 * value_noise(x / 1.5, y / 1.5, 11)),
        Material::Caster { .. } => return [0.0; 3],
    };
    mix(c, SNOW, a.snow * 0.5)
}

/// Rasterise the world into a float canvas (`w`×`h` pixels of `step` m, north-west corner
/// (x0, y0)) with the appearance's materials and shadows; no finishing.
pub fn render_canvas(world: &World, app: &Appearance, x0: f64, y0: f64, step: f64, w: usize, h: usize) -> Canvas {
    let mut cv = Canvas::new(w, h, x0, y0, step);
    for j in 0..h {
        for i in 0..w {
            let (x, y) = cv.world(i, j);
            cv.data[j * w + i] = material_color(&Material::Grass, app, x, y);
        }
    }
    let reach = world.max_height_m * app.shadow_len + 1.0;
    let view = [x0 - reach, y0 - h as f64 * step - reach, x0 + w as f64 * step + reach, y0 + reach];
    let mut ids = world.shapes_in(&view);
    // Stable draw order: by layer, then creation order.
    ids.sort_by_key(|&i| (world.shapes[i as usize].layer, i));
    let split = ids.partition_point(|&i| world.shapes[i as usize].layer < Layer::Shadow);
    for &i in &ids[..split] {
        paint(&mut cv, world, i as usize, app);
    }
    shadows(&mut cv, world, &ids, app);
    for &i in &ids[split..] {
        paint(&mut cv, world, i as usize, app);
    }
    cv
}

fn paint(cv: &mut Canvas, world: &World, i: usize, app: &Appearance) {
    let s = &world.shapes[i];
    if matches!(s.material, Material::Caster { .. }) {
        return;
    }
    let (w, x0, y0, step) = (cv.w, cv.x0, cv.y0, cv.step);
    let mut px: Vec<(usize, usize)> = Vec::new();
    cv.scan(&s.rings, |i, j| px.push((i, j)));
    for (i, j) in px {
        let (x, y) = (x0 + (i as f64 + 0.5) * step, y0 - (j as f64 + 0.5) * step);
        cv.data[j * w + i] = material_color(&s.material, app, x, y);
    }
}

/// Darken the canvas under every caster's shadow: the region swept by the caster's outer ring
/// displaced away from the sun by height × shadow_len (vertical-walled prism; convex hull for
/// convex single rings). Overlaps darken once (mask).
fn shadows(cv: &mut Canvas, world: &World, ids: &[u32], app: &Appearance) {
    let (sx, sy) = app.sun_dir();
    let mut mask = vec![false; cv.w * cv.h];
    let mut any = false;
    for &i in ids {
        let s = &world.shapes[i as usize];
        let Material::Caster { height } = s.material else { continue };
        let d = height as f64 * app.shadow_len;
        let ring = &s.rings[0];
        if s.rings.len() == 1 && convex_hull(ring).len() == ring.len() {
            let mut pts = ring.clone();
            pts.extend(ring.iter().map(|p| (p.0 - sx * d, p.1 - sy * d)));
            let hull = convex_hull(&pts);
            cv.scan(std::slice::from_ref(&hull), |i, j| mask[j * cv.w + i] = true);
        } else {
            // Prism with non-convex or holed footprint: the displaced roof (even-odd) plus the
            // quad swept by every wall edge, so inner corners and courtyards stay correct.
            let moved: Vec<Vec<_>> =
                s.rings.iter().map(|r| r.iter().map(|p| (p.0 - sx * d, p.1 - sy * d)).collect()).collect();
            cv.scan(&moved, |i, j| mask[j * cv.w + i] = true);
            for (r, m) in s.rings.iter().zip(&moved) {
                let n = r.len();
                for k in 0..n {
                    let q = vec![r[k], r[(k + 1) % n], m[(k + 1) % n], m[k]];
                    cv.scan(std::slice::from_ref(&q), |i, j| mask[j * cv.w + i] = true);
                }
            }
        }
        any = true;
    }
    if !any {
        return;
    }
    let k = 1.0 - app.shadow_strength;
    let tint = [k * 0.92, k * 0.97, k * 1.1];
    for (p, m) in cv.data.iter_mut().zip(&mask) {
        if *m {
            *p = std::array::from_fn(|c| p[c] * tint[c]);
        }
    }
}

/// Apply the view's photometric finishing in place and convert to 8-bit RGB.
pub fn finish(mut cv: Canvas, app: &Appearance) -> RgbImage {
    let haze = [200.0f32, 206.0, 214.0];
    for p in cv.data.iter_mut() {
        let c: [f32; 3] = std::array::from_fn(|k| p[k] * app.gain[k]);
        let l = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let c: [f32; 3] =
            std::array::from_fn(|k| (l + app.saturation * (c[k] - l) - 128.0) * app.contrast + 128.0 + app.brightness);
        *p = mix(c, haze, app.haze);
    }
    cv.blur(app.blur_px);
    let (w, h) = (cv.w, cv.h);
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let r2max = cx * cx + cy * cy;
    RgbImage::from_fn(w as u32, h as u32, |i, j| {
        let p = cv.data[j as usize * w + i as usize];
        let (dx, dy) = (i as f32 + 0.5 - cx, j as f32 + 0.5 - cy);
        let vig = 1.0 - app.vignette * (dx * dx + dy * dy) / r2max;
        // Approximately Gaussian noise: sum of two uniforms, centred, unit variance.
        let n = |c: u32| {
            let s = app.noise_seed.wrapping_add(c);
            (hash01(i as i64, j as i64, s) + hash01(j as i64, i as i64, s ^ 0x5bd1) - 1.0) * 2.449
        };
        Rgb(std::array::from_fn(|k| (p[k] * vig + app.noise_sigma * n(k as u32)).round().clamp(0.0, 255.0) as u8))
    })
}

/// Render a north-up orthographic image: `width_px`×`height_px` pixels of `gsd_m` metres,
/// north-west corner at (x0, y0) metres. 2× supersampled.
///
/// Memory is ~48 B per output pixel, so render large mosaics as tiles (e.g. 1024²). Geometry
/// and textures are in world coordinates, so tiles join seamlessly except for the finishing
/// steps that work per image (blur clamps at tile edges, the noise pattern repeats per tile):
/// use `blur_px = 0` and `vignette = 0` for mosaics.
pub fn render_ortho(
    world: &World,
    app: &Appearance,
    x0: f64,
    y0: f64,
    gsd_m: f64,
    width_px: u32,
    height_px: u32,
) -> RgbImage {
    let (w, h) = (width_px as usize, height_px as usize);
    let cv = render_canvas(world, app, x0, y0, gsd_m / 2.0, 2 * w, 2 * h);
    finish(cv.downsample(2), app)
}

/// World point (m) of continuous ortho pixel (px, py) of an image whose north-west corner is
/// (x0, y0) m and whose pixels are `gsd_m` m.
pub fn ortho_pixel_to_world(x0: f64, y0: f64, gsd_m: f64, px: f64, py: f64) -> (f64, f64) {
    (x0 + px * gsd_m, y0 - py * gsd_m)
}

/// Continuous ortho pixel of world point (x, y) m; inverse of [`ortho_pixel_to_world`].
pub fn ortho_world_to_pixel(x0: f64, y0: f64, gsd_m: f64, x: f64, y: f64) -> (f64, f64) {
    ((x - x0) / gsd_m, (y0 - y) / gsd_m)
}

/// GDAL-order affine geotransform of an ortho image in the local metric frame:
/// [x0, gsd, 0, y0, 0, −gsd] (x = gt0 + px·gt1, y = gt3 + py·gt5).
pub fn ortho_geotransform(x0: f64, y0: f64, gsd_m: f64) -> [f64; 6] {
    [x0, gsd_m, 0.0, y0, 0.0, -gsd_m]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::world::{Object, Shape};

    fn one_roof_world(with_caster: bool) -> World {
        let fp = super::super::geom::rect((50.0, 50.0), 20.0, 10.0, 0.0);
        let mut shapes = vec![Shape {
            rings: vec![fp.clone()],
            material: Material::Paint { rgb: [250, 0, 0] },
            layer: Layer::Object,
            bbox: [0.0; 4],
        }];
        if with_caster {
            let m = Material::Caster { height: 10.0 };
            shapes.push(Shape { rings: vec![fp.clone()], material: m, layer: Layer::Shadow, bbox: [0.0; 4] });
        }
        let obj = Object { id: 1, category: "x".into(), footprint: vec![fp], height_m: 10.0, bbox: [0.0; 4] };
        World::from_parts(0, (100.0, 100.0), shapes, vec![obj])
    }

    #[test]
    fn ortho_places_object_and_shadow_where_expected() {
        let mut app = Appearance::neutral();
        app.sun_azimuth_deg = 180.0; // sun in the south → shadow to the north
        app.shadow_len = 1.0;
        app.shadow_strength = 0.5;
        let lit = render_ortho(&one_roof_world(false), &app, 0.0, 100.0, 1.0, 100, 100);
        let img = render_ortho(&one_roof_world(true), &app, 0.0, 100.0, 1.0, 100, 100);
        // Roof: x 40..60, y 45..55 → rows 45..55.
        assert_eq!(img.get_pixel(50, 50).0, [250, 0, 0]);
        // North of the roof (y 58 → row 42) lies in the 10 m shadow: about half as bright.
        let lum = |p: [u8; 3]| p.iter().map(|&v| v as f32).sum::<f32>();
        let ratio = lum(img.get_pixel(50, 42).0) / lum(lit.get_pixel(50, 42).0);
        assert!((0.4..0.6).contains(&ratio), "shadow ratio {ratio}");
        // Beyond the shadow (y 70 → row 30) and south of the roof nothing changes.
        assert_eq!(img.get_pixel(50, 30), lit.get_pixel(50, 30));
        assert_eq!(img.get_pixel(50, 58), lit.get_pixel(50, 58));
    }

    #[test]
    fn ortho_pixel_mapping_round_trips() {
        let (x, y) = ortho_pixel_to_world(100.0, 900.0, 0.5, 10.0, 20.0);
        assert_eq!((x, y), (105.0, 890.0));
        assert_eq!(ortho_world_to_pixel(100.0, 900.0, 0.5, x, y), (10.0, 20.0));
        let gt = ortho_geotransform(100.0, 900.0, 0.5);
        assert_eq!((gt[0] + 10.0 * gt[1], gt[3] + 20.0 * gt[5]), (x, y));
    }
}
