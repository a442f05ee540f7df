//! Coordinate transforms: chip pixel ↔ CRS ↔ WGS84, and ground sizes.
//!
//! Inputs and outputs are [`LonLat`] (WGS84 degrees, lon first) on the geographic side and
//! CRS units (metres for UTM and Web Mercator, degrees for EPSG:4326) on the projected side.
//! GDAL ≥ 3 returns EPSG:4326 latitude-first unless told otherwise; every `SpatialRef`
//! built here gets `AxisMappingStrategy::TraditionalGisOrder`, which a test pins.
//! Ground distances are geodesic on the WGS84 ellipsoid (Karney's algorithm, `geo` crate).
//! Reference: EPSG Guidance Note 7-2 (coordinate conversions and transformations).

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use geo::{Distance, Geodesic};

use super::error::{GeorefError, Result};
use super::types::{Crs, GeoResult, GeoTransform, LonLat, PixelBox};

/// WGS84 geographic CRS, EPSG:4326.
pub const WGS84_EPSG: u32 = 4326;

/// Build a `SpatialRef` with traditional (x = lon/easting) axis order.
pub fn spatial_ref(crs: &Crs) -> Result<SpatialRef> {
    let mut srs =
        SpatialRef::from_wkt(&crs.wkt).map_err(|e| GeorefError::UnknownCrs { crs: crs.label(), msg: e.to_string() })?;
    srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    Ok(srs)
}

/// A [`Crs`] from any definition GDAL accepts: `EPSG:32632`, WKT, PROJ string.
pub fn crs_from_user(definition: &str) -> Result<Crs> {
    let srs = SpatialRef::from_definition(definition)
        .map_err(|e| GeorefError::UnknownCrs { crs: definition.to_string(), msg: e.to_string() })?;
    crs_from_srs(&srs, definition)
}

/// A [`Crs`] for an EPSG code.
pub fn crs_from_epsg(code: u32) -> Result<Crs> {
    let srs = SpatialRef::from_epsg(code)
        .map_err(|e| GeorefError::UnknownCrs { crs: format!("EPSG:{code}"), msg: e.to_string() })?;
    crs_from_srs(&srs, &format!("EPSG:{code}"))
}

/// Convert a GDAL `SpatialRef` into our [`Crs`] (WKT + EPSG code when identifiable).
pub fn crs_from_srs(srs: &SpatialRef, what: &str) -> Result<Crs> {
    let wkt = srs.to_wkt().map_err(|e| GeorefError::UnknownCrs { crs: what.to_string(), msg: e.to_string() })?;
    let epsg = match (srs.auth_name(), srs.auth_code()) {
        (Some(a), Ok(c)) if a.eq_ignore_ascii_case("EPSG") && c > 0 => Some(c as u32),
        _ => None,
    };
    Ok(Crs { wkt, epsg })
}

/// WGS84 geographic [`Crs`].
pub fn wgs84() -> Result<Crs> {
    crs_from_epsg(WGS84_EPSG)
}

/// EPSG code of the WGS84 / UTM zone holding `p` (326zz north, 327zz south).
/// Zones follow the regular 6° grid (the Norway/Svalbard exceptions are not applied).
pub fn utm_epsg_for(p: LonLat) -> Result<u32> {
    p.validate()?;
    let zone = (((p.lon + 180.0) / 6.0).floor() as i64).clamp(0, 59) as u32 + 1;
    Ok(if p.lat >= 0.0 { 32600 } else { 32700 } + zone)
}

/// Transforms between one CRS and WGS84 (both directions), lon/lat order.
pub struct CrsTransform {
    crs: Crs,
    to_wgs84: CoordTransform,
    from_wgs84: CoordTransform,
}

impl CrsTransform {
    /// Transforms for `crs` ↔ EPSG:4326.
    pub fn new(crs: &Crs) -> Result<Self> {
        let src = spatial_ref(crs)?;
        let mut dst = SpatialRef::from_epsg(WGS84_EPSG)
            .map_err(|e| GeorefError::UnknownCrs { crs: "EPSG:4326".into(), msg: e.to_string() })?;
        dst.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
        let err = |e: gdal::errors::GdalError| GeorefError::Transform {
            from: crs.label(),
            to: "EPSG:4326".into(),
            msg: e.to_string(),
        };
        Ok(CrsTransform {
            crs: crs.clone(),
            to_wgs84: CoordTransform::new(&src, &dst).map_err(err)?,
            from_wgs84: CoordTransform::new(&dst, &src).map_err(err)?,
        })
    }

    /// The CRS side of this transform.
    pub fn crs(&self) -> &Crs {
        &self.crs
    }

    /// CRS (x, y) points → WGS84.
    pub fn to_lonlat(&self, pts: &[(f64, f64)]) -> Result<Vec<LonLat>> {
        let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
        run(&self.to_wgs84, &mut xs, &mut ys, &self.crs.label(), "EPSG:4326")?;
        Ok(xs.into_iter().zip(ys).map(|(lon, lat)| LonLat { lon, lat }).collect())
    }

    /// WGS84 points → CRS (x, y).
    pub fn from_lonlat(&self, pts: &[LonLat]) -> Result<Vec<(f64, f64)>> {
        let mut xs: Vec<f64> = pts.iter().map(|p| p.lon).collect();
        let mut ys: Vec<f64> = pts.iter().map(|p| p.lat).collect();
        run(&self.from_wgs84, &mut xs, &mut ys, "EPSG:4326", &self.crs.label())?;
        Ok(xs.into_iter().zip(ys).collect())
    }
}

fn run(ct: &CoordTransform, xs: &mut [f64], ys: &mut [f64], from: &str, to: &str) -> Result<()> {
    let err = |msg: String| GeorefError::Transform { from: from.into(), to: to.into(), msg };
    ct.transform_coords(xs, ys, &mut []).map_err(|e| err(e.to_string()))?;
    if xs.iter().chain(ys.iter()).any(|v| !v.is_finite()) {
        return Err(err("result is not finite (outside the projection's domain?)".into()));
    }
    Ok(())
}

/// Transform points between two arbitrary CRSs (x = easting/lon first on both sides).
pub fn transform_points(from: &Crs, to: &Crs, pts: &[(f64, f64)]) -> Result<Vec<(f64, f64)>> {
    let (s, d) = (spatial_ref(from)?, spatial_ref(to)?);
    let ct = CoordTransform::new(&s, &d).map_err(|e| GeorefError::Transform {
        from: from.label(),
        to: to.label(),
        msg: e.to_string(),
    })?;
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
    run(&ct, &mut xs, &mut ys, &from.label(), &to.label())?;
    Ok(xs.into_iter().zip(ys).collect())
}

/// Geodesic distance in metres between two WGS84 positions.
pub fn geodesic_m(a: LonLat, b: LonLat) -> f64 {
    Geodesic::distance(a.to_point(), b.to_point())
}

/// Chip pixel (corner convention) points → WGS84 through `gt` and `crs`.
pub fn pixels_to_wgs84(px: &[(f64, f64)], gt: &GeoTransform, crs: &Crs) -> Result<Vec<LonLat>> {
    let xy: Vec<(f64, f64)> = px.iter().map(|&(c, r)| gt.apply(c, r)).collect();
    CrsTransform::new(crs)?.to_lonlat(&xy)
}

/// WGS84 points → chip pixels (corner convention; fractional) through `gt` and `crs`.
pub fn wgs84_to_pixels(pts: &[LonLat], gt: &GeoTransform, crs: &Crs) -> Result<Vec<(f64, f64)>> {
    let inv = gt.invert()?;
    let xy = CrsTransform::new(crs)?.from_lonlat(pts)?;
    Ok(xy.into_iter().map(|(x, y)| inv.apply(x, y)).collect())
}

/// A chip pixel box → WGS84 centre, closed footprint ring and geodesic size in metres.
///
/// The ring is top-left, bottom-left, bottom-right, top-right, top-left of the box.
/// `width_m`/`height_m` are geodesic distances between opposite edge midpoints.
pub fn pixel_box_to_wgs84(b: &PixelBox, gt: &GeoTransform, crs: &Crs) -> Result<GeoResult> {
    b.validate()?;
    let (cx, cy) = b.center();
    let px = [
        (cx, cy),
        (b.x1, b.y1),
        (b.x1, b.y2),
        (b.x2, b.y2),
        (b.x2, b.y1),
        (b.x1, cy),
        (b.x2, cy),
        (cx, b.y1),
        (cx, b.y2),
    ];
    let ll = pixels_to_wgs84(&px, gt, crs)?;
    Ok(GeoResult {
        center: ll[0],
        ring: [ll[1], ll[2], ll[3], ll[4], ll[1]],
        width_m: geodesic_m(ll[5], ll[6]),
        height_m: geodesic_m(ll[7], ll[8]),
    })
}

/// The reverse of [`pixel_box_to_wgs84`]: the pixel bounding box of a WGS84 ring or point set.
pub fn wgs84_to_pixel_box(pts: &[LonLat], gt: &GeoTransform, crs: &Crs) -> Result<PixelBox> {
    if pts.is_empty() {
        return Err(GeorefError::Invalid("no points to convert to a pixel box".into()));
    }
    let px = wgs84_to_pixels(pts, gt, crs)?;
    let init = (f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (x1, y1, x2, y2) = px.iter().fold(init, |(a, b, c, d), &(x, y)| (a.min(x), b.min(y), c.max(x), d.max(y)));
    Ok(PixelBox { x1, y1, x2, y2 })
}

/// CRS units per ground metre at CRS point `(x, y)`, separately along x and along y.
///
/// Geographic CRSs and Mercator-family projections (Web Mercator's grid metres are not
/// ground metres: scale 1/cos(lat)) are measured geodesically around the point. Other
/// projected CRSs (UTM, national grids) use their grid metres (`1 / linear unit`), the way
/// GSD is quoted for orthophotos on such grids.
pub fn units_per_metre(crs: &Crs, x: f64, y: f64) -> Result<(f64, f64)> {
    let srs = spatial_ref(crs)?;
    let proj = srs.get_attr_value("PROJECTION", 0).ok().flatten().unwrap_or_default();
    let proj = proj.to_ascii_lowercase();
    let mercator = proj.contains("mercator") && !proj.contains("transverse");
    if srs.is_projected() && !mercator {
        let unit = srs.linear_units();
        if !(unit.is_finite() && unit > 0.0) {
            return Err(GeorefError::UnknownCrs { crs: crs.label(), msg: format!("linear unit {unit} m") });
        }
        return Ok((1.0 / unit, 1.0 / unit));
    }
    // Measure: a small step in x and in y, converted to WGS84, geodesic length in metres.
    let d = if srs.is_geographic() { 1e-5 } else { 1.0 };
    let ll = CrsTransform::new(crs)?.to_lonlat(&[(x, y), (x + d, y), (x, y + d)])?;
    let (mx, my) = (geodesic_m(ll[0], ll[1]), geodesic_m(ll[0], ll[2]));
    if !(mx > 0.0 && my > 0.0) {
        return Err(GeorefError::Transform {
            from: crs.label(),
            to: "ground metres".into(),
            msg: format!("degenerate scale at ({x}, {y})"),
        });
    }
    Ok((d / mx, d / my))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt_utm() -> GeoTransform {
        GeoTransform([690000.0, 0.25, 0.0, 5340000.0, 0.0, -0.25])
    }

    /// The value checked in ENVIRONMENT.md (pins the axis order: lon first).
    #[test]
    fn utm32n_known_point_lon_first() {
        let crs = crs_from_epsg(32632).unwrap();
        let ll = CrsTransform::new(&crs).unwrap().to_lonlat(&[(690512.25, 5339487.75)]).unwrap();
        assert!((ll[0].lon - 11.5629612).abs() < 1e-7, "{:?}", ll[0]);
        assert!((ll[0].lat - 48.1800402).abs() < 1e-7, "{:?}", ll[0]);
    }

    /// EPSG Guidance Note 7-2 (IOGP publication 373-7-2), "Popular Visualisation Pseudo
    /// Mercator" worked example: lat 24°22'54.433"N, lon 100°20'00.000"W on WGS 84 →
    /// E = -11 169 055.58 m, N = 2 800 000.00 m (EPSG:3857).
    #[test]
    fn pseudo_mercator_guidance_note_example() {
        let crs = crs_from_epsg(3857).unwrap();
        let lat = 24.0 + 22.0 / 60.0 + 54.433 / 3600.0;
        let lon = -(100.0 + 20.0 / 60.0);
        let t = CrsTransform::new(&crs).unwrap();
        let xy = t.from_lonlat(&[LonLat::new(lon, lat)]).unwrap()[0];
        assert!((xy.0 - -11_169_055.58).abs() < 0.01, "{xy:?}");
        assert!((xy.1 - 2_800_000.00).abs() < 0.01, "{xy:?}");
        let back = t.to_lonlat(&[xy]).unwrap()[0];
        assert!((back.lon - lon).abs() < 1e-9 && (back.lat - lat).abs() < 1e-9);
    }

    /// EPSG Guidance Note 7-2, Transverse Mercator worked example (OSGB 1936 / British
    /// National Grid, EPSG:27700, from OSGB 1936 geographic EPSG:4277):
    /// lat 50°30'00"N, lon 00°30'00"E → E = 577 274.99 m, N = 69 740.50 m.
    #[test]
    fn british_national_grid_guidance_note_example() {
        let from = crs_from_epsg(4277).unwrap();
        let to = crs_from_epsg(27700).unwrap();
        let xy = transform_points(&from, &to, &[(0.5, 50.5)]).unwrap()[0];
        assert!((xy.0 - 577_274.99).abs() < 0.02, "{xy:?}");
        assert!((xy.1 - 69_740.50).abs() < 0.02, "{xy:?}");
    }

    #[test]
    fn box_to_wgs84_and_back() {
        let crs = crs_from_epsg(32632).unwrap();
        let b = PixelBox { x1: 100.0, y1: 200.0, x2: 140.0, y2: 260.0 };
        let r = pixel_box_to_wgs84(&b, &gt_utm(), &crs).unwrap();
        assert_eq!(r.ring[0], r.ring[4]);
        // 40 px * 0.25 m = 10 m grid width; ground/grid scale near the zone edge ~1.0003.
        assert!((r.width_m - 10.0).abs() < 0.01, "{}", r.width_m);
        assert!((r.height_m - 15.0).abs() < 0.01, "{}", r.height_m);
        // ring is counter-clockwise on the map: top-left is north-west of bottom-right.
        assert!(r.ring[0].lat > r.ring[2].lat && r.ring[0].lon < r.ring[2].lon);
        let back = wgs84_to_pixel_box(&r.ring, &gt_utm(), &crs).unwrap();
        for (a, e) in [(back.x1, 100.0), (back.y1, 200.0), (back.x2, 140.0), (back.y2, 260.0)] {
            assert!((a - e).abs() < 1e-6, "{back:?}");
        }
    }

    #[test]
    fn utm_zone_and_bad_crs() {
        assert_eq!(utm_epsg_for(LonLat::new(11.56, 48.18)).unwrap(), 32632);
        assert_eq!(utm_epsg_for(LonLat::new(-70.0, -33.0)).unwrap(), 32719);
        assert_eq!(utm_epsg_for(LonLat::new(180.0, 0.0)).unwrap(), 32660);
        assert!(matches!(crs_from_user("EPSG:999999"), Err(GeorefError::UnknownCrs { .. })));
        assert!(matches!(crs_from_user("not a crs"), Err(GeorefError::UnknownCrs { .. })));
    }

    #[test]
    fn units_per_metre_by_crs_kind() {
        let utm = crs_from_epsg(32632).unwrap();
        assert_eq!(units_per_metre(&utm, 690000.0, 5340000.0).unwrap(), (1.0, 1.0));
        // Web Mercator at 60°N: about 2 grid metres per ground metre.
        let wm = crs_from_epsg(3857).unwrap();
        let y60 = CrsTransform::new(&wm).unwrap().from_lonlat(&[LonLat::new(10.0, 60.0)]).unwrap()[0];
        let (sx, sy) = units_per_metre(&wm, y60.0, y60.1).unwrap();
        assert!((sx - 2.0).abs() < 0.01 && (sy - 2.0).abs() < 0.01, "{sx} {sy}");
        // Geographic at 60°N: a degree of longitude is half as long as at the equator.
        let geo = crs_from_epsg(4326).unwrap();
        let (dx, dy) = units_per_metre(&geo, 10.0, 60.0).unwrap();
        assert!((dx / dy - 1.0 / 0.5).abs() < 0.02, "{dx} {dy}");
    }
}
