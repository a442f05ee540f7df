//! `smgeo synth scene`: a synthetic, georeferenced satellite mosaic of one procedural
//! [`World`], written as a real Cloud Optimized GeoTIFF plus `scene.json`.
//!
//! Georeferencing: the world's local frame (x east, y north, metres, origin at its
//! south-west corner) is laid on the grid of a projected CRS with metre units
//! ([`SceneConfig::epsg`], default UTM 33N):
//! `easting = origin_e + x`, `northing = origin_n + y`. Grid metres are taken as world
//! metres (the UTM scale factor, ≤ 0.04 % near the central meridian, is ignored: the world
//! *is* defined on the grid). The ground is flat at [`SceneConfig::ground_msl_m`].
//!
//! Output folder:
//! - `mosaic.tif`: COG (GDAL `COG` driver), 3-band u8 RGB, 256-px blocks, internal
//!   overviews, north-up geotransform `[origin_e, gsd, 0, origin_n + extent_n, 0, −gsd]`,
//!   the CRS of `epsg`; JPEG (default) or DEFLATE compression.
//! - `scene.json` ([`SceneInfo`]): the config (seed, extent, …) from which
//!   [`World::generate`] rebuilds the identical world, the geotransform, the CRS WKT,
//!   WGS84 bounds, object counts and the satellite [`Appearance`].
//!
//! Rendering: [`render_ortho`] in 512-px tiles with an overlap margin (so the blur has no
//! seams), sensor noise added afterwards on the global pixel grid (so it does not repeat
//! per tile). Tiles run on a few threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gdal::raster::Buffer;
use gdal::spatial_ref::SpatialRef;
use gdal::{DriverManager, Metadata};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::geom::P2;
use super::raster::hash01;
use super::render::{render_ortho, Appearance};
use super::world::World;
use super::{Result, SynthError};
use crate::georef::gdalutil::translate;
use crate::georef::transform::crs_from_epsg;
use crate::georef::{Compression, Crs, CrsTransform, LonLat};

/// Schema tag written into `scene.json`.
pub const SCENE_SCHEMA: &str = "smgeo.synth.scene.v1";
/// File names inside a scene folder.
pub const SCENE_JSON: &str = "scene.json";
pub const MOSAIC_FILE: &str = "mosaic.tif";

/// What to generate; everything needed to regenerate the same world and mosaic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneConfig {
    /// World seed ([`World::generate`]); also seeds the satellite appearance.
    pub seed: u64,
    /// (east, north) size of the world in metres, 200 ..= 20000 each.
    pub extent_m: (f64, f64),
    /// Mosaic ground sampling distance, metres per pixel (0.05 ..= 10).
    pub gsd_m: f64,
    /// EPSG code of a projected CRS with metre units (default 32633, WGS84 / UTM 33N).
    pub epsg: u32,
    /// CRS coordinates of the world's south-west corner (world (0, 0)).
    pub origin_e: f64,
    pub origin_n: f64,
    /// Height of the flat ground above mean sea level (m), used by the KLV writer.
    pub ground_msl_m: f64,
    /// Mosaic compression.
    pub compression: Compression,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            seed: 7,
            extent_m: (1500.0, 1500.0),
            gsd_m: 0.5,
            epsg: 32633,
            // UTM 33N central meridian (15° E), about 47.85° N.
            origin_e: 500_000.0,
            origin_n: 5_300_000.0,
            ground_msl_m: 0.0,
            compression: Compression::Jpeg { quality: 90 },
        }
    }
}

/// Largest mosaic we render (pixels); 3 bytes each in memory while writing.
const MAX_MOSAIC_PX: f64 = 200e6;

impl SceneConfig {
    /// Mosaic size in pixels (the extent rounded up to whole pixels).
    pub fn size_px(&self) -> (u32, u32) {
        let n = |e: f64| ((e / self.gsd_m) - 1e-9).ceil().max(1.0) as u32;
        (n(self.extent_m.0), n(self.extent_m.1))
    }

    /// North-up GDAL geotransform of the mosaic in the CRS.
    pub fn geotransform(&self) -> [f64; 6] {
        let (_, h) = self.size_px();
        [self.origin_e, self.gsd_m, 0.0, self.origin_n + h as f64 * self.gsd_m, 0.0, -self.gsd_m]
    }

    /// Range checks that need no GDAL (the CRS is checked by [`SceneConfig::crs`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, why| Err(SynthError::InvalidConfig { field, value, why });
        let (e, n) = self.extent_m;
        if !((200.0..=20_000.0).contains(&e) && (200.0..=20_000.0).contains(&n)) {
            return bad("extent_m", format!("{e}x{n}"), "each side must be 200 ..= 20000 m");
        }
        if !(0.05..=10.0).contains(&self.gsd_m) {
            return bad("gsd_m", self.gsd_m.to_string(), "need 0.05 ≤ gsd ≤ 10 m/px");
        }
        let (w, h) = self.size_px();
        if w as f64 * h as f64 > MAX_MOSAIC_PX {
            return bad("gsd_m", self.gsd_m.to_string(), "mosaic would exceed 200 Mpx; use a coarser gsd");
        }
        if !(self.origin_e.is_finite() && self.origin_n.is_finite()) {
            return bad("origin", format!("{}, {}", self.origin_e, self.origin_n), "must be finite");
        }
        if !(-500.0..=9000.0).contains(&self.ground_msl_m) {
            return bad("ground_msl_m", self.ground_msl_m.to_string(), "need -500 ≤ h ≤ 9000 m");
        }
        if let Compression::Jpeg { quality } = self.compression {
            if !(1..=100).contains(&quality) {
                return bad("compression", quality.to_string(), "JPEG quality must be 1 ..= 100");
            }
        }
        Ok(())
    }

    /// The CRS of `epsg`; error unless it is projected with metre units.
    pub fn crs(&self) -> Result<Crs> {
        let crs = crs_from_epsg(self.epsg)?;
        let srs =
            SpatialRef::from_epsg(self.epsg).map_err(|e| SynthError::Invalid(format!("EPSG:{}: {e}", self.epsg)))?;
        if !srs.is_projected() || (srs.linear_units() - 1.0).abs() > 1e-9 {
            let why = "must be a projected CRS in metres (e.g. a UTM zone)";
            return Err(SynthError::InvalidConfig { field: "epsg", value: self.epsg.to_string(), why });
        }
        Ok(crs)
    }
}

/// Contents of `scene.json`, plus the folder it was loaded from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SceneInfo {
    pub schema: String,
    pub config: SceneConfig,
    /// Mosaic file name, relative to the scene folder.
    pub mosaic: String,
    pub size_px: (u32, u32),
    pub geotransform: [f64; 6],
    pub crs_wkt: String,
    /// `[west, south, east, north]` degrees of the world extent.
    pub bounds_wgs84: [f64; 4],
    pub object_count: usize,
    pub shape_count: usize,
    /// Objects per category.
    pub categories: BTreeMap<String, usize>,
    pub satellite_appearance: Appearance,
    /// How long rendering and writing took (ms).
    pub render_ms: f64,
    pub write_ms: f64,
    /// The folder holding `scene.json` (not serialised).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// World metres ↔ CRS ↔ WGS84 for one scene (owns GDAL transform handles; not `Sync`).
pub struct SceneGeo {
    origin: (f64, f64),
    ct: CrsTransform,
}

impl SceneGeo {
    /// Transforms for `cfg` (checks the CRS).
    pub fn new(cfg: &SceneConfig) -> Result<Self> {
        Ok(SceneGeo { origin: (cfg.origin_e, cfg.origin_n), ct: CrsTransform::new(&cfg.crs()?)? })
    }

    /// World metres → CRS coordinates.
    pub fn world_to_crs(&self, p: P2) -> (f64, f64) {
        (self.origin.0 + p.0, self.origin.1 + p.1)
    }

    /// CRS coordinates → world metres.
    pub fn crs_to_world(&self, p: (f64, f64)) -> P2 {
        (p.0 - self.origin.0, p.1 - self.origin.1)
    }

    /// World points → WGS84.
    pub fn world_to_lonlat_many(&self, pts: &[P2]) -> Result<Vec<LonLat>> {
        let crs: Vec<(f64, f64)> = pts.iter().map(|&p| self.world_to_crs(p)).collect();
        Ok(self.ct.to_lonlat(&crs)?)
    }

    /// WGS84 points → world metres.
    pub fn lonlat_to_world_many(&self, pts: &[LonLat]) -> Result<Vec<P2>> {
        Ok(self.ct.from_lonlat(pts)?.into_iter().map(|p| self.crs_to_world(p)).collect())
    }

    pub fn world_to_lonlat(&self, x: f64, y: f64) -> Result<LonLat> {
        Ok(self.world_to_lonlat_many(&[(x, y)])?[0])
    }

    pub fn lonlat_to_world(&self, p: LonLat) -> Result<P2> {
        Ok(self.lonlat_to_world_many(&[p])?[0])
    }
}

impl SceneInfo {
    /// Read `dir/scene.json`.
    pub fn load(dir: &Path) -> Result<SceneInfo> {
        let path = dir.join(SCENE_JSON);
        let text = std::fs::read_to_string(&path).map_err(|source| SynthError::Io { path: path.clone(), source })?;
        let mut s: SceneInfo = serde_json::from_str(&text).map_err(|source| SynthError::Json { path, source })?;
        if s.schema != SCENE_SCHEMA {
            return Err(SynthError::Invalid(format!(
                "{}: schema {:?}, expected {SCENE_SCHEMA}",
                dir.display(),
                s.schema
            )));
        }
        s.config.validate()?;
        s.dir = dir.to_path_buf();
        Ok(s)
    }

    /// Regenerate the scene's world (deterministic for the seed and extent).
    pub fn world(&self) -> World {
        World::generate(self.config.seed, self.config.extent_m)
    }

    /// Path of the mosaic file.
    pub fn mosaic_path(&self) -> PathBuf {
        self.dir.join(&self.mosaic)
    }

    /// Transforms for many points (builds the GDAL transform once).
    pub fn geo(&self) -> Result<SceneGeo> {
        SceneGeo::new(&self.config)
    }

    /// One world point → WGS84 (builds a transform per call; use [`SceneInfo::geo`] for many).
    pub fn world_to_lonlat(&self, x: f64, y: f64) -> Result<LonLat> {
        self.geo()?.world_to_lonlat(x, y)
    }

    /// One WGS84 point → world metres (see [`SceneInfo::world_to_lonlat`]).
    pub fn lonlat_to_world(&self, p: LonLat) -> Result<P2> {
        self.geo()?.lonlat_to_world(p)
    }
}

/// The satellite appearance of a scene seed (blur kept, no vignette).
pub fn satellite_appearance(seed: u64) -> Appearance {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5A7E_111E_5CE2_E000);
    Appearance { vignette: 0.0, ..Appearance::satellite(&mut rng) }
}

/// Render the mosaic: `w`×`h` pixels of `gsd` m, north-west corner (x0, y0) m, in
/// overlapping tiles on `threads` threads; noise on the global pixel grid.
#[allow(clippy::too_many_arguments)]
pub fn render_mosaic(
    world: &World,
    app: &Appearance,
    x0: f64,
    y0: f64,
    gsd: f64,
    w: u32,
    h: u32,
    threads: usize,
) -> RgbImage {
    const TILE: u32 = 512;
    let quiet = Appearance { noise_sigma: 0.0, vignette: 0.0, ..app.clone() };
    let margin = (3.0 * app.blur_px.max(0.0)).ceil() as u32 + 2;
    let tiles: Vec<(u32, u32)> =
        (0..h).step_by(TILE as usize).flat_map(|ty| (0..w).step_by(TILE as usize).map(move |tx| (tx, ty))).collect();
    let threads = threads.clamp(1, tiles.len().max(1));
    let mut rendered: Vec<Option<RgbImage>> = (0..tiles.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let per = tiles.len().div_ceil(threads);
        for (chunk_tiles, chunk_out) in tiles.chunks(per).zip(rendered.chunks_mut(per)) {
            let quiet = &quiet;
            s.spawn(move || {
                for (&(tx, ty), slot) in chunk_tiles.iter().zip(chunk_out.iter_mut()) {
                    let (tw, th) = (TILE.min(w - tx), TILE.min(h - ty));
                    let ox = x0 + (tx as f64 - margin as f64) * gsd;
                    let oy = y0 - (ty as f64 - margin as f64) * gsd;
                    *slot = Some(render_ortho(world, quiet, ox, oy, gsd, tw + 2 * margin, th + 2 * margin));
                }
            });
        }
    });
    let mut out = RgbImage::new(w, h);
    for (&(tx, ty), img) in tiles.iter().zip(rendered) {
        let Some(img) = img else { continue };
        let (tw, th) = (TILE.min(w - tx), TILE.min(h - ty));
        for j in 0..th {
            for i in 0..tw {
                out.put_pixel(tx + i, ty + j, *img.get_pixel(i + margin, j + margin));
            }
        }
    }
    add_noise(&mut out, app.noise_sigma, app.noise_seed, (0, 0));
    out
}

/// Add the renderer's approximately Gaussian sensor noise (σ in 0–255 units), indexed by
/// global pixel (offset.0 + i, offset.1 + j) so tiles of one mosaic share one pattern.
pub fn add_noise(img: &mut RgbImage, sigma: f32, seed: u32, offset: (i64, i64)) {
    if sigma <= 0.0 {
        return;
    }
    for (i, j, p) in img.enumerate_pixels_mut() {
        let (gi, gj) = (offset.0 + i as i64, offset.1 + j as i64);
        for k in 0..3 {
            let s = seed.wrapping_add(k as u32);
            let n = (hash01(gi, gj, s) + hash01(gj, gi, s ^ 0x5bd1) - 1.0) * 2.449;
            p.0[k] = (p.0[k] as f32 + sigma * n).round().clamp(0.0, 255.0) as u8;
        }
    }
}

fn werr(path: &Path) -> impl Fn(gdal::errors::GdalError) -> SynthError + '_ {
    move |e| SynthError::Georef(crate::georef::GeorefError::Write { path: path.to_path_buf(), msg: e.to_string() })
}

/// Write `img` as a COG with geotransform `gt` and CRS `crs`.
pub fn write_cog(
    img: &RgbImage,
    gt: [f64; 6],
    crs: &Crs,
    compression: Compression,
    meta: &str,
    path: &Path,
) -> Result<()> {
    let err = werr(path);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mem = DriverManager::get_driver_by_name("MEM").map_err(&err)?;
    let mut ds = mem.create_with_band_type::<u8, _>("", w, h, 3).map_err(&err)?;
    ds.set_geo_transform(&gt).map_err(&err)?;
    ds.set_projection(&crs.wkt).map_err(&err)?;
    ds.set_metadata_item("SMGEO_SYNTH_SCENE", meta, "").map_err(&err)?;
    let raw = img.as_raw();
    for b in 0..3 {
        let data: Vec<u8> = raw.iter().skip(b).step_by(3).copied().collect();
        let mut buf = Buffer::new((w, h), data);
        ds.rasterband(b + 1).map_err(&err)?.write((0, 0), (w, h), &mut buf).map_err(&err)?;
    }
    let s = |v: &str| v.to_string();
    let mut args = vec![s("-of"), s("COG"), s("-co"), s("BLOCKSIZE=256"), s("-co"), s("OVERVIEWS=AUTO")];
    args.extend([s("-co"), s("RESAMPLING=AVERAGE")]);
    match compression {
        Compression::Deflate => args.extend([s("-co"), s("COMPRESS=DEFLATE"), s("-co"), s("PREDICTOR=2")]),
        Compression::Jpeg { quality } => {
            args.extend([s("-co"), s("COMPRESS=JPEG"), s("-co"), format!("QUALITY={quality}")])
        }
    }
    translate(&ds, path, &args)?.close().map_err(&err)?;
    Ok(())
}

/// Render and write a scene into `out_dir` (created if needed): `mosaic.tif` + `scene.json`.
pub fn build_scene(cfg: &SceneConfig, out_dir: &Path) -> Result<SceneInfo> {
    cfg.validate()?;
    let geo = SceneGeo::new(cfg)?;
    let crs = cfg.crs()?;
    std::fs::create_dir_all(out_dir).map_err(|source| SynthError::Io { path: out_dir.to_path_buf(), source })?;
    let t0 = std::time::Instant::now();
    let world = World::generate(cfg.seed, cfg.extent_m);
    let app = satellite_appearance(cfg.seed);
    let (w, h) = cfg.size_px();
    let gt = cfg.geotransform();
    // North-west corner in world metres.
    let (x0, y0) = geo.crs_to_world((gt[0], gt[3]));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    let img = render_mosaic(&world, &app, x0, y0, cfg.gsd_m, w, h, threads);
    let render_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = std::time::Instant::now();
    let (ex, ey) = cfg.extent_m;
    let corners = geo.world_to_lonlat_many(&[(0.0, 0.0), (ex, 0.0), (ex, ey), (0.0, ey)])?;
    let bounds_wgs84 = [
        corners.iter().map(|p| p.lon).fold(f64::INFINITY, f64::min),
        corners.iter().map(|p| p.lat).fold(f64::INFINITY, f64::min),
        corners.iter().map(|p| p.lon).fold(f64::NEG_INFINITY, f64::max),
        corners.iter().map(|p| p.lat).fold(f64::NEG_INFINITY, f64::max),
    ];
    let mut categories = BTreeMap::new();
    for o in &world.objects {
        *categories.entry(o.category.clone()).or_insert(0usize) += 1;
    }
    let mut info = SceneInfo {
        schema: SCENE_SCHEMA.into(),
        config: cfg.clone(),
        mosaic: MOSAIC_FILE.into(),
        size_px: (w, h),
        geotransform: gt,
        crs_wkt: crs.wkt.clone(),
        bounds_wgs84,
        object_count: world.objects.len(),
        shape_count: world.shapes.len(),
        categories,
        satellite_appearance: app,
        render_ms,
        write_ms: 0.0,
        dir: out_dir.to_path_buf(),
    };
    let meta = serde_json::to_string(&info.config).map_err(|e| SynthError::Invalid(format!("scene config: {e}")))?;
    write_cog(&img, gt, &crs, cfg.compression, &meta, &out_dir.join(MOSAIC_FILE))?;
    info.write_ms = t1.elapsed().as_secs_f64() * 1e3;
    write_json(&out_dir.join(SCENE_JSON), &info)?;
    Ok(info)
}

/// Pretty JSON to a file, errors with the path.
pub(crate) fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|source| SynthError::Json { path: path.to_path_buf(), source })?;
    std::fs::write(path, text + "\n").map_err(|source| SynthError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::georef::{ChipRequest, MosaicSpec};
    use crate::synth::geom::centroid;

    fn small() -> SceneConfig {
        SceneConfig {
            seed: 21,
            extent_m: (400.0, 400.0),
            gsd_m: 1.0,
            compression: Compression::Deflate,
            ..Default::default()
        }
    }

    #[test]
    fn scene_cog_has_crs_geotransform_overviews_and_registers_world_points() {
        let dir = tempfile::tempdir().unwrap();
        let info = build_scene(&small(), dir.path()).unwrap();
        let back = SceneInfo::load(dir.path()).unwrap();
        assert_eq!(back.config, info.config);
        assert_eq!(back.geotransform, [500000.0, 1.0, 0.0, 5300400.0, 0.0, -1.0]);
        let world = back.world();
        assert_eq!(world.objects.len(), info.object_count);

        // GDAL reads a COG with our CRS and geotransform.
        let r = MosaicSpec::from_path(back.mosaic_path()).open().unwrap();
        assert_eq!(r.crs().epsg, Some(32633));
        assert_eq!(r.geotransform().0, back.geotransform);
        assert_eq!(r.size(), (400, 400));
        assert!(!r.overviews().unwrap().is_empty(), "internal overviews expected");
        let ds = gdal::Dataset::open(back.mosaic_path()).unwrap();
        assert_eq!(ds.metadata_item("LAYOUT", "IMAGE_STRUCTURE").as_deref(), Some("COG"));
        assert_eq!(ds.rasterband(1).unwrap().block_size(), (256, 256));

        // gdalinfo (the command-line tool) agrees, when installed.
        if let Ok(out) = std::process::Command::new("gdalinfo").arg("-json").arg(back.mosaic_path()).output() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let gt: Vec<f64> = serde_json::from_value(v["geoTransform"].clone()).unwrap();
            assert_eq!(gt, back.geotransform.to_vec());
            assert!(v["coordinateSystem"]["wkt"].as_str().unwrap().contains("UTM zone 33N"));
            assert_eq!(v["size"], serde_json::json!([400, 400]));
        }

        // World (0, 0) is (500000, 5300000) in UTM 33N: on the central meridian, 15° E.
        let geo = back.geo().unwrap();
        let sw = geo.world_to_lonlat(0.0, 0.0).unwrap();
        assert!((sw.lon - 15.0).abs() < 1e-9 && (47.8..47.9).contains(&sw.lat), "{sw:?}");
        for p in [(0.0, 0.0), (123.4, 321.0), (400.0, 400.0)] {
            let ll = geo.world_to_lonlat(p.0, p.1).unwrap();
            let q = back.lonlat_to_world(ll).unwrap();
            assert!((q.0 - p.0).abs() < 1e-6 && (q.1 - p.1).abs() < 1e-6, "{p:?} -> {q:?}");
        }

        // A chip cut around an object's centroid (through WGS84) shows exactly what the
        // renderer draws there; two pixels off it does not.
        let obj = world
            .objects
            .iter()
            .find(|o| o.bbox[0] > 60.0 && o.bbox[1] > 60.0 && o.bbox[2] < 340.0 && o.bbox[3] < 340.0)
            .unwrap();
        let c = centroid(&obj.footprint);
        let ll = geo.world_to_lonlat(c.0, c.1).unwrap();
        let chip = r.chip(&ChipRequest { width: 48, height: 48, ..ChipRequest::new(ll) }).unwrap();
        let (cx0, cy0) = geo.crs_to_world((chip.geotransform.0[0], chip.geotransform.0[3]));
        assert!((cx0 - (c.0 - 24.0)).abs() <= 0.5 && (cy0 - (c.1 + 24.0)).abs() <= 0.5, "chip corner {cx0},{cy0}");
        let app = &back.satellite_appearance;
        let quiet = Appearance { noise_sigma: 0.0, ..app.clone() };
        let reference = |dx: f64| {
            let mut img = render_ortho(&world, &quiet, cx0 + dx, cy0, 1.0, 48, 48);
            let off = ((cx0 + dx - x0_of(&back)).round() as i64, (y0_of(&back) - cy0).round() as i64);
            add_noise(&mut img, app.noise_sigma, app.noise_seed, off);
            img
        };
        let mad = |img: &RgbImage| {
            let mut s = 0.0;
            for j in 6..42u32 {
                for i in 6..42u32 {
                    let a = img.get_pixel(i, j).0;
                    let b = chip.rgb(i as usize, j as usize).unwrap();
                    s += (0..3).map(|k| (a[k] as f64 - b[k] as f64).abs()).sum::<f64>() / 3.0;
                }
            }
            s / (36.0 * 36.0)
        };
        let (aligned, shifted) = (mad(&reference(0.0)), mad(&reference(2.0)));
        assert!(aligned < 0.1, "aligned mean abs diff {aligned}");
        assert!(shifted > 1.0, "two pixels off: {shifted} vs {aligned}");
    }

    fn x0_of(s: &SceneInfo) -> f64 {
        s.geotransform[0] - s.config.origin_e
    }

    fn y0_of(s: &SceneInfo) -> f64 {
        s.geotransform[3] - s.config.origin_n
    }

    #[test]
    fn scene_config_rejects_bad_values() {
        assert!(SceneConfig { extent_m: (100.0, 400.0), ..small() }.validate().is_err());
        assert!(SceneConfig { gsd_m: 0.0, ..small() }.validate().is_err());
        assert!(SceneConfig { gsd_m: f64::NAN, ..small() }.validate().is_err());
        assert!(SceneConfig { origin_e: f64::INFINITY, ..small() }.validate().is_err());
        assert!(SceneConfig { compression: Compression::Jpeg { quality: 0 }, ..small() }.validate().is_err());
        // Geographic CRS: not metres.
        let e = SceneConfig { epsg: 4326, ..small() }.crs().unwrap_err();
        assert!(matches!(e, SynthError::InvalidConfig { field: "epsg", .. }), "{e}");
        assert!(SceneConfig { epsg: 999_999, ..small() }.crs().is_err());
        assert!(small().crs().is_ok());
        let dir = tempfile::tempdir().unwrap();
        assert!(SceneInfo::load(dir.path()).is_err(), "no scene.json");
        std::fs::write(dir.path().join(SCENE_JSON), "{not json").unwrap();
        assert!(matches!(SceneInfo::load(dir.path()), Err(SynthError::Json { .. })));
    }

    #[test]
    fn tiled_render_matches_one_piece_render() {
        // Tiles with overlap margins join without seams: equal to one render of the whole
        // (both without noise), up to rare edge-pixel rounding.
        let world = World::generate(5, (300.0, 300.0));
        let app = Appearance { noise_sigma: 0.0, blur_px: 0.8, ..satellite_appearance(5) };
        let tiled = render_mosaic(&world, &app, 0.0, 300.0, 0.5, 600, 600, 2);
        let whole = render_ortho(&world, &app, 0.0, 300.0, 0.5, 600, 600);
        let differ = tiled
            .pixels()
            .zip(whole.pixels())
            .filter(|(a, b)| a.0.iter().zip(b.0).any(|(x, y)| x.abs_diff(y) > 1))
            .count();
        assert!(differ * 1000 < 600 * 600, "{differ} pixels differ");
    }
}
