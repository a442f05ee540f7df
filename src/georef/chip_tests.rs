//! Chip tests on generated rasters in three CRSs (UTM 32N, EPSG:3857, EPSG:4326):
//! seams, GDAL agreement, coverage, reprojection, bad requests, threads.

#[cfg(test)]
mod tests {
    use crate::georef::chip::*;
    use crate::georef::error::GeorefError;
    use crate::georef::mosaic::MosaicReader;
    use crate::georef::mosaic::MosaicSpec;
    use crate::georef::testutil::{pattern, write_grid, write_tile, GT_3857, GT_4326, GT_UTM};
    use crate::georef::transform::CrsTransform;
    use crate::georef::transform::{pixels_to_wgs84, wgs84_to_pixels};
    use crate::georef::types::PixelBox;
    use crate::georef::types::{Chip, LonLat};

    /// WGS84 position of the corner of global mosaic pixel (gx, gy).
    fn corner(r: &MosaicReader, gx: f64, gy: f64) -> LonLat {
        let (x, y) = r.geotransform().apply(gx, gy);
        CrsTransform::new(r.crs()).unwrap().to_lonlat(&[(x, y)]).unwrap()[0]
    }

    fn assert_native(chip: &Chip, gx0: usize, gy0: usize) {
        for r in 0..chip.height {
            for c in 0..chip.width {
                let want = pattern(gx0 + c, gy0 + r);
                assert_eq!(chip.rgb(c, r), Some(want), "chip pixel ({c},{r})");
            }
        }
    }

    fn req(center: LonLat, w: usize, h: usize) -> ChipRequest {
        ChipRequest { width: w, height: h, ..ChipRequest::new(center) }
    }

    /// A 2×2 file mosaic and a VRT of it, in three CRSs: native chips across the file
    /// corner equal the source pattern (seamless, no resampling).
    #[test]
    fn native_chip_is_seamless_across_files_in_three_crs() {
        for (epsg, gt) in [(32632, GT_UTM), (3857, GT_3857), (4326, GT_4326)] {
            let dir = tempfile::tempdir().unwrap();
            write_grid(dir.path(), epsg, gt, (400, 400), (2, 2));
            let reader = MosaicSpec::from_path(dir.path()).open().unwrap();
            assert_eq!(reader.files().len(), 4);
            let chip = reader.chip(&req(corner(&reader, 200.0, 200.0), 128, 96)).unwrap();
            assert_eq!(chip.coverage, 1.0, "EPSG:{epsg}");
            assert_native(&chip, 200 - 64, 200 - 48);
            // Same through an on-disk VRT made by gdalbuildvrt.
            let vrt = dir.path().join("index.vrt");
            let files: Vec<_> = reader.files().iter().map(|p| p.display().to_string()).collect();
            let st = std::process::Command::new("gdalbuildvrt").arg("-q").arg(&vrt).args(&files).status().unwrap();
            assert!(st.success());
            let vr = MosaicSpec::from_path(&vrt).open().unwrap();
            assert_eq!(vr.footprints().len(), 4, "VRT member footprints");
            let px = [(10.5, 300.25), (399.0, 1.0)];
            let ours = pixels_to_wgs84(&px, &vr.geotransform(), vr.crs()).unwrap();
            for (o, t) in ours.iter().zip(gdaltransform(&vrt, &px)) {
                assert!((o.lon - t.0).abs() < 1e-7 && (o.lat - t.1).abs() < 1e-7, "VRT {o:?} {t:?}");
            }
            let chip2 = vr.chip(&req(corner(&vr, 200.0, 200.0), 128, 96)).unwrap();
            assert_eq!(chip2.pixels, chip.pixels);
            assert_eq!(chip2.geotransform, chip.geotransform);
        }
    }

    /// Pixel → WGS84 agrees with `gdaltransform` to 1e-7°, and WGS84 → pixel round-trips.
    #[test]
    fn pixel_to_wgs84_matches_gdaltransform_in_three_crs() {
        let px = [(0.0, 0.0), (10.5, 20.25), (123.0, 77.5), (200.0, 200.0)];
        for (epsg, gt) in [(32632, GT_UTM), (3857, GT_3857), (4326, GT_4326)] {
            let dir = tempfile::tempdir().unwrap();
            let f = write_tile(&dir.path().join("a.tif"), Some(epsg), gt, (0, 0), (200, 200));
            let reader = MosaicSpec::from_path(&f).open().unwrap();
            let ours = pixels_to_wgs84(&px, &reader.geotransform(), reader.crs()).unwrap();
            let theirs = gdaltransform(&f, &px);
            for (o, t) in ours.iter().zip(&theirs) {
                assert!((o.lon - t.0).abs() < 1e-7 && (o.lat - t.1).abs() < 1e-7, "EPSG:{epsg} {o:?} vs {t:?}");
            }
            let back = wgs84_to_pixels(&ours, &reader.geotransform(), reader.crs()).unwrap();
            for (b, p) in back.iter().zip(&px) {
                assert!((b.0 - p.0).abs() < 1e-6 && (b.1 - p.1).abs() < 1e-6, "EPSG:{epsg} {b:?} vs {p:?}");
            }
        }
    }

    fn gdaltransform(file: &std::path::Path, px: &[(f64, f64)]) -> Vec<(f64, f64)> {
        use std::io::Write;
        let mut child = std::process::Command::new("gdaltransform")
            .args(["-t_srs", "EPSG:4326", "-output_xy"])
            .arg(file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input: String = px.iter().map(|(x, y)| format!("{x} {y}\n")).collect();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Vec<f64> = l.split_whitespace().map(|s| s.parse().unwrap()).collect();
                (v[0], v[1])
            })
            .collect()
    }

    /// GSD 3× native: GDAL's floating window picks source pixel 3c+1 for chip pixel c.
    #[test]
    fn coarser_gsd_samples_expected_source_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_tile(&dir.path().join("a.tif"), Some(32632), GT_UTM, (0, 0), (400, 400));
        let reader = MosaicSpec::from_path(&f).open().unwrap();
        let r = ChipRequest { gsd_m: Some(1.5), ..req(corner(&reader, 200.0, 200.0), 40, 40) };
        let chip = reader.chip(&r).unwrap();
        assert!((chip.geotransform.0[1] - 1.5).abs() < 1e-12);
        for y in 0..40 {
            for x in 0..40 {
                assert_eq!(chip.rgb(x, y), Some(pattern(141 + 3 * x, 141 + 3 * y)), "({x},{y})");
            }
        }
    }

    #[test]
    fn partly_outside_fills_reports_or_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_tile(&dir.path().join("a.tif"), Some(32632), GT_UTM, (0, 0), (200, 200));
        let reader = MosaicSpec::from_path(&f).open().unwrap();
        let mut r = req(corner(&reader, 0.0, 100.0), 100, 100);
        r.coverage = CoveragePolicy::Fill { value: 7, min_coverage: 0.0 };
        let chip = reader.chip(&r).unwrap();
        assert!((chip.coverage - 0.5).abs() < 1e-12, "{}", chip.coverage);
        assert_eq!(chip.rgb(0, 0), Some([7, 7, 7]));
        assert_eq!(chip.rgb(50, 0), Some(pattern(0, 50)));
        r.coverage = CoveragePolicy::Refuse;
        assert!(matches!(reader.chip(&r), Err(GeorefError::PartialCoverage { .. })));
        r.coverage = CoveragePolicy::Fill { value: 0, min_coverage: 0.6 };
        assert!(matches!(reader.chip(&r), Err(GeorefError::PartialCoverage { .. })));
        // Wholly outside: the error says where the mosaic is.
        let far = req(LonLat::new(12.5, 48.18), 64, 64);
        let e = reader.chip(&far).unwrap_err();
        assert!(matches!(e, GeorefError::OutsideCoverage { .. }), "{e}");
        assert!(e.to_string().contains("lon 11.55"), "{e}");
    }

    #[test]
    fn gaps_between_files_lower_coverage() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_grid(dir.path(), 32632, GT_UTM, (400, 400), (2, 2));
        std::fs::remove_file(&files[3]).unwrap();
        let reader = MosaicSpec::from_path(dir.path()).open().unwrap();
        let chip = reader.chip(&req(corner(&reader, 200.0, 200.0), 100, 100)).unwrap();
        assert!((chip.coverage - 0.75).abs() < 1e-12, "{}", chip.coverage);
        assert!((reader.coverage_fraction() - 0.75).abs() < 0.01);
    }

    /// Reprojected chip: local UTM grid from a Web Mercator mosaic; each chip pixel holds
    /// the mosaic pixel under its centre (nearest).
    #[test]
    fn local_utm_chip_from_web_mercator_mosaic() {
        let dir = tempfile::tempdir().unwrap();
        write_grid(dir.path(), 3857, GT_3857, (400, 400), (2, 2));
        let reader = MosaicSpec::from_path(dir.path()).open().unwrap();
        let center = corner(&reader, 200.0, 200.0);
        let r = ChipRequest { gsd_m: Some(0.5), grid: ChipGrid::LocalUtm, ..req(center, 64, 64) };
        let chip = reader.chip(&r).unwrap();
        assert_eq!(chip.crs.epsg, Some(32632));
        assert_eq!(chip.coverage, 1.0);
        assert!((chip.geotransform.0[1] - 0.5).abs() < 1e-9);
        let whole = PixelBox { x1: 0.0, y1: 0.0, x2: 64.0, y2: 64.0 };
        let g = chip.box_to_wgs84(&whole).unwrap();
        assert!((g.center.lon - center.lon).abs() < 1e-8 && (g.center.lat - center.lat).abs() < 1e-8);
        let (mut checked, mut same) = (0, 0);
        for (c, rr) in [(3, 5), (20, 31), (40, 10), (63, 63), (31, 32), (0, 50)] {
            let ll = pixels_to_wgs84(&[(c as f64 + 0.5, rr as f64 + 0.5)], &chip.geotransform, &chip.crs).unwrap();
            let m = wgs84_to_pixels(&ll, &reader.geotransform(), reader.crs()).unwrap()[0];
            if (m.0 - m.0.round()).abs() < 0.05 || (m.1 - m.1.round()).abs() < 0.05 {
                continue; // too close to a source pixel edge to call nearest
            }
            checked += 1;
            same += (chip.rgb(c, rr) == Some(pattern(m.0.floor() as usize, m.1.floor() as usize))) as usize;
        }
        assert!(checked >= 3 && same == checked, "{same}/{checked}");
    }

    /// GSD on a geographic mosaic is in ground metres.
    #[test]
    fn geographic_mosaic_gsd_in_metres() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_tile(&dir.path().join("a.tif"), Some(4326), GT_4326, (0, 0), (400, 400));
        let reader = MosaicSpec::from_path(&f).open().unwrap();
        let r = ChipRequest { gsd_m: Some(1.0), ..req(corner(&reader, 200.0, 200.0), 100, 60) };
        let chip = reader.chip(&r).unwrap();
        let g = chip.box_to_wgs84(&PixelBox { x1: 0.0, y1: 0.0, x2: 100.0, y2: 60.0 }).unwrap();
        assert!((g.width_m - 100.0).abs() < 0.1 && (g.height_m - 60.0).abs() < 0.1, "{g:?}");
    }

    #[test]
    fn bad_requests_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_tile(&dir.path().join("a.tif"), Some(32632), GT_UTM, (0, 0), (64, 64));
        let reader = MosaicSpec::from_path(&f).open().unwrap();
        let c = corner(&reader, 32.0, 32.0);
        for g in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let r = ChipRequest { gsd_m: Some(g), ..req(c, 16, 16) };
            assert!(matches!(reader.chip(&r), Err(GeorefError::InvalidGsd(_))), "{g}");
        }
        assert!(matches!(reader.chip(&req(c, 0, 16)), Err(GeorefError::InvalidSize { .. })));
        assert!(reader.chip(&req(LonLat::new(f64::NAN, 1.0), 16, 16)).is_err());
    }

    /// The spec is shared; each worker thread opens its own reader.
    #[test]
    fn readers_per_thread_from_shared_spec() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<MosaicReader>();
        send_sync::<MosaicSpec>();
        let dir = tempfile::tempdir().unwrap();
        write_grid(dir.path(), 32632, GT_UTM, (400, 400), (2, 2));
        let spec = std::sync::Arc::new(MosaicSpec::from_path(dir.path()));
        let main = spec.open().unwrap();
        let center = corner(&main, 190.0, 210.0);
        let want = main.chip(&req(center, 64, 64)).unwrap().pixels;
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let spec = spec.clone();
                std::thread::spawn(move || {
                    let r = spec.open().unwrap();
                    (0..3).map(|_| r.chip(&req(center, 64, 64)).unwrap().pixels).collect::<Vec<_>>()
                })
            })
            .collect();
        // A reader can also be moved into a worker.
        let moved = std::thread::spawn(move || main.chip(&req(center, 64, 64)).unwrap().pixels);
        for h in handles {
            for px in h.join().unwrap() {
                assert_eq!(px, want);
            }
        }
        assert_eq!(moved.join().unwrap(), want);
    }
}
