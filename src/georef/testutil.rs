//! Test helpers: small generated GeoTIFFs with a position-dependent RGB pattern, so any
//! seam, shift or flip between files shows up as a pixel mismatch.

use std::path::{Path, PathBuf};

use gdal::raster::Buffer;
use gdal::spatial_ref::SpatialRef;
use gdal::DriverManager;

/// Pattern value of global pixel (gx, gy): three channels with different periods.
pub fn pattern(gx: usize, gy: usize) -> [u8; 3] {
    [((gx * 7 + gy * 3) % 256) as u8, ((gx ^ (gy * 5)) % 256) as u8, ((gx / 16 + (gy / 16) * 5) % 256) as u8]
}

/// A tile of the pattern: `size` pixels starting at global pixel `origin`; the file's
/// geotransform is `gt` shifted by `origin` pixels; CRS `epsg` (None: no CRS written).
pub fn write_tile(
    path: &Path,
    epsg: Option<u32>,
    gt: [f64; 6],
    origin: (usize, usize),
    size: (usize, usize),
) -> PathBuf {
    let drv = DriverManager::get_driver_by_name("GTiff").unwrap();
    let mut ds = drv.create_with_band_type::<u8, _>(path, size.0, size.1, 3).unwrap();
    let (ox, oy) = (origin.0 as f64, origin.1 as f64);
    let tile_gt = [gt[0] + ox * gt[1] + oy * gt[2], gt[1], gt[2], gt[3] + ox * gt[4] + oy * gt[5], gt[4], gt[5]];
    ds.set_geo_transform(&tile_gt).unwrap();
    if let Some(code) = epsg {
        ds.set_spatial_ref(&SpatialRef::from_epsg(code).unwrap()).unwrap();
    }
    for b in 0..3 {
        let mut data = Vec::with_capacity(size.0 * size.1);
        for y in 0..size.1 {
            for x in 0..size.0 {
                data.push(pattern(origin.0 + x, origin.1 + y)[b]);
            }
        }
        let mut buf = Buffer::new(size, data);
        ds.rasterband(b + 1).unwrap().write((0, 0), size, &mut buf).unwrap();
    }
    path.to_path_buf()
}

/// Split a `total` pixel pattern into a `nx × ny` grid of tiles in `dir`.
pub fn write_grid(dir: &Path, epsg: u32, gt: [f64; 6], total: (usize, usize), n: (usize, usize)) -> Vec<PathBuf> {
    let (tw, th) = (total.0 / n.0, total.1 / n.1);
    let mut out = Vec::new();
    for j in 0..n.1 {
        for i in 0..n.0 {
            let p = dir.join(format!("tile_{j}_{i}.tif"));
            out.push(write_tile(&p, Some(epsg), gt, (i * tw, j * th), (tw, th)));
        }
    }
    out
}

/// UTM 32N, 0.5 m pixels near Munich.
pub const GT_UTM: [f64; 6] = [690000.0, 0.5, 0.0, 5340000.0, 0.0, -0.5];
/// Web Mercator, 0.6 m grid pixels near Munich.
pub const GT_3857: [f64; 6] = [1287000.0, 0.6, 0.0, 6134000.0, 0.0, -0.6];
/// Geographic, 5e-6° pixels near Munich.
pub const GT_4326: [f64; 6] = [11.55, 5e-6, 0.0, 48.19, 0.0, -5e-6];
