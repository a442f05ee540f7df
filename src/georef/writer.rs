//! Writing rasters: `mosaic build` (source imagery → COG tiles + VRT index) and
//! georeferenced chip GeoTIFFs.
//!
//! Tiles are Cloud Optimized GeoTIFFs (GDAL `COG` driver): 256-px internal blocks,
//! DEFLATE (lossless) or JPEG (lossy, 3-band u8 only) compression, internal overviews
//! down to one block (`OVERVIEWS=AUTO`). `index.vrt` in the output folder joins all tiles.

use std::path::{Path, PathBuf};

use gdal::raster::Buffer;
use gdal::{Dataset, DriverManager};
use serde::{Deserialize, Serialize};

use super::error::{GeorefError, Result};
use super::gdalutil::{translate, warp, Resampling};
use super::mosaic::{open_source, MosaicSpec};
use super::transform::crs_from_user;
use super::types::Chip;

/// Tile compression.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Compression {
    /// Lossless DEFLATE.
    Deflate,
    /// Lossy JPEG with quality 1..=100 (3-band 8-bit imagery).
    Jpeg { quality: u8 },
}

/// Options of [`build_mosaic`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildOptions {
    /// Tile side in pixels (each tile is one COG file); default 4096.
    pub tile_px: usize,
    /// Compression of the tiles.
    pub compression: Compression,
    /// Reproject to this CRS first (any GDAL definition, e.g. `EPSG:32632`); `None` keeps it.
    pub t_srs: Option<String>,
    /// Resampling for reprojection and overviews.
    pub resampling: Resampling,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { tile_px: 4096, compression: Compression::Deflate, t_srs: None, resampling: Resampling::Bilinear }
    }
}

/// What [`build_mosaic`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    /// COG tiles, in writing order.
    pub tiles: Vec<PathBuf>,
    /// The VRT index over all tiles.
    pub vrt: PathBuf,
}

fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

/// Tile every source of `spec` into COGs under `out_dir` plus `out_dir/index.vrt`.
pub fn build_mosaic(spec: &MosaicSpec, out_dir: &Path, opts: &BuildOptions) -> Result<BuildReport> {
    if !(16..=65536).contains(&opts.tile_px) {
        return Err(GeorefError::Invalid(format!("tile size {} px not in 16..=65536", opts.tile_px)));
    }
    if let Compression::Jpeg { quality } = opts.compression {
        if !(1..=100).contains(&quality) {
            return Err(GeorefError::Invalid(format!("JPEG quality {quality} not in 1..=100")));
        }
    }
    if let Some(t) = &opts.t_srs {
        crs_from_user(t)?;
    }
    std::fs::create_dir_all(out_dir).map_err(|source| GeorefError::Io { path: out_dir.to_path_buf(), source })?;
    let mut tiles = Vec::new();
    for file in spec.resolve_files()? {
        let src = open_source(&file)?;
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("src").to_string();
        let ds = match &opts.t_srs {
            Some(t) => {
                let args = [s("-of"), s("VRT"), s("-t_srs"), t.clone(), s("-r"), s(opts.resampling.gdal_name())];
                warp(&[&src.ds], "", &args)?
            }
            None => src.ds,
        };
        tiles.extend(tile_one(&ds, &stem, out_dir, opts)?);
    }
    let vrt = out_dir.join("index.vrt");
    let opened: Vec<Dataset> = tiles
        .iter()
        .map(|t| Dataset::open(t).map_err(|e| GeorefError::Open { path: t.clone(), msg: e.to_string() }))
        .collect::<Result<_>>()?;
    let v = gdal::programs::raster::build_vrt(Some(&vrt), &opened, None)
        .map_err(|e| GeorefError::Write { path: vrt.clone(), msg: e.to_string() })?;
    v.close().map_err(|e| GeorefError::Write { path: vrt.clone(), msg: e.to_string() })?;
    Ok(BuildReport { tiles, vrt })
}

fn tile_one(ds: &Dataset, stem: &str, out_dir: &Path, opts: &BuildOptions) -> Result<Vec<PathBuf>> {
    let (w, h) = ds.raster_size();
    let t = opts.tile_px;
    let mut co = vec![s("-of"), s("COG"), s("-co"), s("BLOCKSIZE=256"), s("-co"), s("OVERVIEWS=AUTO")];
    co.extend([s("-co"), format!("RESAMPLING={}", cog_resampling(opts.resampling))]);
    match opts.compression {
        Compression::Deflate => co.extend([s("-co"), s("COMPRESS=DEFLATE")]),
        Compression::Jpeg { quality } => {
            co.extend([s("-co"), s("COMPRESS=JPEG"), s("-co"), format!("QUALITY={quality}")])
        }
    }
    let mut out = Vec::new();
    for (j, y) in (0..h).step_by(t).enumerate() {
        for (i, x) in (0..w).step_by(t).enumerate() {
            let path = out_dir.join(format!("{stem}_r{j:03}_c{i:03}.tif"));
            let mut args = co.clone();
            args.extend([s("-srcwin"), s(x), s(y), s(t.min(w - x)), s(t.min(h - y))]);
            translate(ds, &path, &args)?;
            out.push(path);
        }
    }
    Ok(out)
}

fn cog_resampling(r: Resampling) -> &'static str {
    match r {
        Resampling::Nearest => "NEAREST",
        Resampling::Bilinear => "BILINEAR",
        Resampling::Cubic => "CUBIC",
        Resampling::Average => "AVERAGE",
    }
}

/// Write a chip as a tiled, DEFLATE-compressed RGB GeoTIFF with its geotransform and CRS;
/// the fill value is declared as nodata when the chip is not fully covered.
pub fn write_chip(chip: &Chip, path: &Path) -> Result<()> {
    let werr = |e: gdal::errors::GdalError| GeorefError::Write { path: path.to_path_buf(), msg: e.to_string() };
    if chip.pixels.len() != chip.width * chip.height * 3 {
        return Err(GeorefError::Invalid(format!(
            "chip buffer holds {} bytes, expected {}x{}x3",
            chip.pixels.len(),
            chip.width,
            chip.height
        )));
    }
    let mem = DriverManager::get_driver_by_name("MEM").map_err(werr)?;
    let mut ds = mem.create_with_band_type::<u8, _>("", chip.width, chip.height, 3).map_err(werr)?;
    ds.set_geo_transform(&chip.geotransform.0).map_err(werr)?;
    ds.set_projection(&chip.crs.wkt).map_err(werr)?;
    for b in 0..3 {
        let data: Vec<u8> = chip.pixels.iter().skip(b).step_by(3).copied().collect();
        let mut buf = Buffer::new((chip.width, chip.height), data);
        let mut band = ds.rasterband(b + 1).map_err(werr)?;
        band.write((0, 0), (chip.width, chip.height), &mut buf).map_err(werr)?;
        if chip.coverage < 1.0 {
            band.set_no_data_value(Some(chip.fill as f64)).map_err(werr)?;
        }
    }
    let args = [
        s("-of"),
        s("GTiff"),
        s("-co"),
        s("TILED=YES"),
        s("-co"),
        s("COMPRESS=DEFLATE"),
        s("-co"),
        s("PHOTOMETRIC=RGB"),
    ];
    translate(&ds, path, &args)?.close().map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::georef::chip::ChipRequest;
    use crate::georef::testutil::{pattern, write_tile, GT_UTM};
    use crate::georef::transform::{pixels_to_wgs84, CrsTransform};

    #[test]
    fn build_tiles_into_cogs_with_vrt_index() {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        write_tile(&src.path().join("a.tif"), Some(32632), GT_UTM, (0, 0), (600, 300));
        let opts = BuildOptions { tile_px: 512, ..Default::default() };
        let rep = build_mosaic(&MosaicSpec::from_path(src.path()), out.path(), &opts).unwrap();
        assert_eq!(rep.tiles.len(), 2);
        let t0 = Dataset::open(&rep.tiles[0]).unwrap();
        assert_eq!(t0.raster_size(), (512, 300));
        let band = t0.rasterband(1).unwrap();
        assert_eq!(band.block_size(), (256, 256));
        assert_eq!(band.overview_count().unwrap(), 1);
        let r = MosaicSpec::from_path(&rep.vrt).open().unwrap();
        assert_eq!(r.size(), (600, 300));
        assert_eq!(r.footprints().len(), 2);
        // A chip straddling the tile border equals the source pattern.
        let (x, y) = r.geotransform().apply(512.0, 150.0);
        let c = CrsTransform::new(r.crs()).unwrap().to_lonlat(&[(x, y)]).unwrap()[0];
        let chip = r.chip(&ChipRequest { width: 64, height: 32, ..ChipRequest::new(c) }).unwrap();
        for row in 0..32 {
            for col in 0..64 {
                assert_eq!(chip.rgb(col, row), Some(pattern(480 + col, 134 + row)));
            }
        }
        let jpeg = BuildOptions { compression: Compression::Jpeg { quality: 90 }, ..opts };
        let out2 = tempfile::tempdir().unwrap();
        let rep2 = build_mosaic(&MosaicSpec::from_path(src.path()), out2.path(), &jpeg).unwrap();
        assert_eq!(rep2.tiles.len(), 2);
        let bad = BuildOptions { tile_px: 0, ..Default::default() };
        assert!(build_mosaic(&MosaicSpec::from_path(src.path()), out2.path(), &bad).is_err());
    }

    #[test]
    fn reproject_while_building() {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        write_tile(&src.path().join("a.tif"), Some(32632), GT_UTM, (0, 0), (100, 100));
        let opts = BuildOptions { t_srs: Some("EPSG:3857".into()), ..Default::default() };
        let rep = build_mosaic(&MosaicSpec::from_path(src.path()), out.path(), &opts).unwrap();
        let r = MosaicSpec::from_path(&rep.vrt).open().unwrap();
        assert_eq!(r.crs().epsg, Some(3857));
    }

    /// A written chip carries the same georeferencing GDAL itself reads back.
    #[test]
    fn written_chip_georeference_matches_gdal() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_tile(&dir.path().join("a.tif"), Some(32632), GT_UTM, (0, 0), (200, 200));
        let r = MosaicSpec::from_path(&f).open().unwrap();
        let req = ChipRequest {
            width: 50,
            height: 40,
            gsd_m: Some(0.7),
            ..ChipRequest::new(crate::georef::LonLat::new(11.5570, 48.1843))
        };
        let chip = r.chip(&req).unwrap();
        let out = dir.path().join("chip.tif");
        write_chip(&chip, &out).unwrap();
        let back = crate::georef::mosaic::MosaicSpec::from_path(&out).open().unwrap();
        assert_eq!(back.geotransform(), chip.geotransform);
        assert_eq!(back.crs().epsg, Some(32632));
        let full = back
            .chip(&ChipRequest {
                width: 50,
                height: 40,
                ..ChipRequest::new(pixels_to_wgs84(&[(25.0, 20.0)], &chip.geotransform, &chip.crs).unwrap()[0])
            })
            .unwrap();
        assert_eq!(full.pixels, chip.pixels);
    }
}
