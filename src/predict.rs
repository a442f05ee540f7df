//! `smgeo predict`: one localisation from image files. The query is resized to the
//! model's query size (click scaled with it), the reference to the nearest multiple
//! of 32 px; the box is mapped back to reference pixels, printed as JSON, and drawn
//! with the query and its click into one picture.

use std::path::{Path, PathBuf};

use image::{imageops::FilterType, Rgb, RgbImage};
use tch::Tensor;

use crate::model::{preprocess, Precision, Trace};
use crate::weights_cli::{load_for_inference, ModelChoice};
use crate::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Drone image (any format the `image` crate reads).
    #[arg(long)]
    pub query: PathBuf,
    /// Click in query pixels, `X,Y`.
    #[arg(long, value_parser = parse_xy)]
    pub click: (f64, f64),
    /// Satellite reference image (PNG/JPEG/TIFF).
    #[arg(long)]
    pub reference: PathBuf,
    #[arg(long)]
    pub weights: PathBuf,
    #[command(flatten)]
    pub model: ModelChoice,
    /// Size the query is resized to, `WxH`.
    #[arg(long, default_value = "256x256", value_parser = parse_wh)]
    pub query_size: (u32, u32),
    /// Picture of the result (PNG).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Inference precision (auto: bf16 on CUDA, f32 on CPU).
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    pub precision: Precision,
}

pub fn parse_xy(s: &str) -> std::result::Result<(f64, f64), String> {
    let (a, b) = s.split_once(',').ok_or("expected X,Y")?;
    let x = a.trim().parse().map_err(|_| format!("bad X in {s:?}"))?;
    let y = b.trim().parse().map_err(|_| format!("bad Y in {s:?}"))?;
    Ok((x, y))
}

fn parse_wh(s: &str) -> std::result::Result<(u32, u32), String> {
    let (a, b) = s.split_once('x').ok_or("expected WxH")?;
    let w: u32 = a.parse().map_err(|_| format!("bad width in {s:?}"))?;
    let h: u32 = b.parse().map_err(|_| format!("bad height in {s:?}"))?;
    if w == 0 || h == 0 || w % 32 != 0 || h % 32 != 0 {
        return Err(format!("{s}: sides must be positive multiples of 32"));
    }
    Ok((w, h))
}

pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::open(path).map_err(|e| Error::Image { path: path.display().to_string(), msg: e.to_string() })?;
    Ok(img.to_rgb8())
}

/// Result of one localisation, in reference-image pixels.
#[derive(Debug, serde::Serialize)]
pub struct Prediction {
    pub box_xyxy: [f32; 4],
    pub center: [f32; 2],
    pub score: f32,
    pub cell: (i64, i64),
    pub device: String,
    /// WGS84 result when the reference is a georeferenced raster (GeoTIFF etc.).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wgs84: Option<serde_json::Value>,
}

/// Box in reference pixels → WGS84 centre, footprint ring and ground size, when the
/// reference file carries georeferencing. `Ok(None)` for plain images.
#[cfg(feature = "geo")]
fn georeference(path: &Path, b: [f32; 4]) -> Result<Option<serde_json::Value>> {
    use crate::georef::{pixel_box_to_wgs84, MosaicSpec, PixelBox};
    let is_raster = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "tif" | "tiff" | "vrt" | "img" | "jp2"));
    if !is_raster {
        return Ok(None);
    }
    let reader = match MosaicSpec::from_path(path).open() {
        Ok(r) => r,
        Err(e) => {
            tracing::info!("{}: not georeferenced ({e}); printing pixels only", path.display());
            return Ok(None);
        }
    };
    let pb = PixelBox { x1: b[0] as f64, y1: b[1] as f64, x2: b[2] as f64, y2: b[3] as f64 };
    let g = pixel_box_to_wgs84(&pb, &reader.geotransform(), reader.crs())
        .map_err(|e| Error::Io(format!("georeferencing the box in {}: {e}", path.display())))?;
    Ok(Some(serde_json::json!({
        "center": [g.center.lon, g.center.lat],
        "footprint": g.ring.iter().map(|p| [p.lon, p.lat]).collect::<Vec<_>>(),
        "width_m": g.width_m,
        "height_m": g.height_m,
        "crs": reader.crs().label(),
    })))
}

#[cfg(not(feature = "geo"))]
fn georeference(_path: &Path, _b: [f32; 4]) -> Result<Option<serde_json::Value>> {
    Ok(None)
}

pub fn run(a: &PredictArgs) -> Result<Prediction> {
    let dev = crate::device::select(&a.device)?;
    let q = load_rgb(&a.query)?;
    let r = load_rgb(&a.reference)?;
    preprocess::check_click(a.click.0, a.click.1, q.width() as i64, q.height() as i64)?;
    let (qw, qh) = a.query_size;
    let (sx, sy) = (qw as f64 / q.width() as f64, qh as f64 / q.height() as f64);
    let qr = image::imageops::resize(&q, qw, qh, FilterType::Triangle);
    let click = (a.click.0 * sx, a.click.1 * sy);
    let rw = (r.width().div_ceil(32) * 32).max(32);
    let rh = (r.height().div_ceil(32) * 32).max(32);
    let rr =
        if (rw, rh) == r.dimensions() { r.clone() } else { image::imageops::resize(&r, rw, rh, FilterType::Triangle) };
    let qt = preprocess::to_input(qr.as_raw(), qw as i64, qh as i64, 3 * qw as usize, Some(click))?.unsqueeze(0);
    let rt = preprocess::to_input(rr.as_raw(), rw as i64, rh as i64, 3 * rw as usize, None)?.unsqueeze(0);
    let cfg = a.model.resolve()?;
    let (_vs, m) = load_for_inference(&cfg, &a.weights, dev, a.precision)?;
    let out = tch::no_grad(|| m.forward_t(&qt.to(dev), &rt.to(dev), false, &mut Trace::off()))?;
    let det = crate::model::decode(&out.heatmap, &out.bbox, (rh as i64, rw as i64))[0];
    let (bx, by) = (r.width() as f32 / rw as f32, r.height() as f32 / rh as f32);
    let b = det.box_xyxy;
    let box_xyxy = [b[0] * bx, b[1] * by, b[2] * bx, b[3] * by];
    let pred = Prediction {
        box_xyxy,
        center: [(box_xyxy[0] + box_xyxy[2]) / 2.0, (box_xyxy[1] + box_xyxy[3]) / 2.0],
        score: det.score,
        cell: det.cell,
        device: crate::device::describe(dev),
        wgs84: georeference(&a.reference, box_xyxy)?,
    };
    if let Some(out) = &a.out {
        let pic = draw_result(&q, a.click, &r, box_xyxy);
        pic.save(out).map_err(|e| Error::Image { path: out.display().to_string(), msg: e.to_string() })?;
    }
    Ok(pred)
}

/// Query (with a cross at the click) left of the reference (with the box).
pub fn draw_result(q: &RgbImage, click: (f64, f64), r: &RgbImage, b: [f32; 4]) -> RgbImage {
    let mut pic = compose(q, click, r);
    let ox = (q.width() + 8) as i64;
    draw_rect(&mut pic, [b[0] as i64 + ox, b[1] as i64, b[2] as i64 + ox, b[3] as i64], Rgb([255, 220, 0]), 2);
    pic
}

/// Query (with a cross at the click) left of the reference, 8 px apart.
pub fn compose(q: &RgbImage, click: (f64, f64), r: &RgbImage) -> RgbImage {
    let h = q.height().max(r.height());
    let mut pic = RgbImage::from_pixel(q.width() + 8 + r.width(), h, Rgb([24, 24, 24]));
    image::imageops::overlay(&mut pic, q, 0, 0);
    image::imageops::overlay(&mut pic, r, (q.width() + 8) as i64, 0);
    let red = Rgb([255, 40, 40]);
    let (cx, cy) = (click.0 as i64, click.1 as i64);
    for d in -8..=8 {
        for t in -1..=1 {
            put(&mut pic, cx + d, cy + t, red);
            put(&mut pic, cx + t, cy + d, red);
        }
    }
    pic
}

pub fn draw_rect(pic: &mut RgbImage, b: [i64; 4], c: Rgb<u8>, thick: i64) {
    for t in 0..thick {
        for x in b[0]..=b[2] {
            put(pic, x, b[1] + t, c);
            put(pic, x, b[3] - t, c);
        }
        for y in b[1]..=b[3] {
            put(pic, b[0] + t, y, c);
            put(pic, b[2] - t, y, c);
        }
    }
}

fn put(pic: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < pic.width() && (y as u32) < pic.height() {
        pic.put_pixel(x as u32, y as u32, c);
    }
}

/// Convenience for tests and benches: an RGB image as a normalised (1, C, H, W) input.
pub fn image_tensor(img: &RgbImage, click: Option<(f64, f64)>) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    Ok(preprocess::to_input(img.as_raw(), w as i64, h as i64, 3 * w as usize, click)?.unsqueeze(0))
}
