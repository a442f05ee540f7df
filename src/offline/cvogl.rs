//! CVOGL annotation records and split files (spec §7).
//!
//! A split file `<dataset>_<split>.pth` (split: `train`, `val` or `test`) holds a Python
//! list of 8-field records:
//!
//! | field | content | units |
//! |---|---|---|
//! | 0 | sample id (int) | — |
//! | 1 | query image file in `query/` | — |
//! | 2 | satellite image file in `satellite/` | — |
//! | 3 | an (x, y) pair, unused by the loaders | (probably) original query pixels |
//! | 4 | click (x, y) | query-image pixels |
//! | 5 | target box [x1, y1, x2, y2] | satellite pixels |
//! | 6 | polygon, 4 corners (x, y) | satellite pixels |
//! | 7 | class name, e.g. `building_retail` | — |
//!
//! Expected image sizes (both reference loaders assume them): satellite 1024×1024,
//! `CVOGL_DroneAerial` query 256×256, `CVOGL_SVI` query 256 (H) × 512 (W).
//!
//! Loading validates every record and skips (or, in strict mode, rejects) bad ones,
//! with a [`LoadReport`] naming each skipped record and the reason. Checks: field
//! types, finite numbers, x1 < x2 and y1 < y2, a box that overlaps the satellite image,
//! a click inside the query image (borders included: `0 ≤ x ≤ W`, `0 ≤ y ≤ H`), and
//! plain file names (no path separators, not `.`/`..`, since names are joined to
//! directories).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::pth::{read_pth, write_pth};
use super::value::PyValue;
use super::{OfflineError, Result};

/// One CVOGL annotation record (spec §7).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CvoglRecord {
    /// Field 0: sample id.
    pub id: i64,
    /// Field 1: query image file name, relative to `<dataset>/query/`.
    pub query_file: String,
    /// Field 2: satellite image file name, relative to `<dataset>/satellite/`.
    pub sat_file: String,
    /// Field 3: (x, y), unused by the loaders.
    pub field3: (f64, f64),
    /// Field 4: click (x, y) in query pixels.
    pub click: (f64, f64),
    /// Field 5: target box (x1, y1, x2, y2) in satellite pixels.
    pub bbox: [f64; 4],
    /// Field 6: polygon corners (x1, y1, …, x4, y4) in satellite pixels.
    pub polygon: [f64; 8],
    /// Field 7: class name.
    pub category: String,
}

/// Expected image sizes of a dataset, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DatasetGeometry {
    /// Query image (height, width).
    pub query_hw: (u32, u32),
    /// Satellite image (height, width).
    pub sat_hw: (u32, u32),
}

impl DatasetGeometry {
    /// Sizes of the two CVOGL datasets; `None` for other names.
    pub fn for_dataset(name: &str) -> Option<DatasetGeometry> {
        let query_hw = match name {
            "CVOGL_DroneAerial" => (256, 256),
            "CVOGL_SVI" => (256, 512),
            _ => return None,
        };
        Some(DatasetGeometry { query_hw, sat_hw: (1024, 1024) })
    }
}

/// Options for [`CvoglSplit::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Stop at the first invalid record with an error instead of skipping it.
    pub strict: bool,
    /// Image sizes to validate against; default: [`DatasetGeometry::for_dataset`].
    pub geometry: Option<DatasetGeometry>,
}

/// A record left out of a load, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedRecord {
    /// Position in the file's list.
    pub index: usize,
    /// Field 0 if it could be read.
    pub id: Option<i64>,
    pub reason: String,
}

/// What a load found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    /// The split file read.
    pub path: PathBuf,
    /// Directory holding `query/` and `satellite/` (the split file's directory).
    pub dataset_dir: PathBuf,
    pub geometry: DatasetGeometry,
    /// Records in the file.
    pub total: usize,
    /// Records returned.
    pub loaded: usize,
    pub skipped: Vec<SkippedRecord>,
    /// Ids seen more than once among the loaded records (kept, reported).
    pub duplicate_ids: Vec<i64>,
}

/// Loading and locating CVOGL split files.
pub struct CvoglSplit;

impl CvoglSplit {
    /// Load `<dataset>_<split>.pth` from `root` (the dataset directory, or the data
    /// directory that contains `<dataset>/`), skipping invalid records.
    pub fn load(root: &Path, dataset: &str, split: &str) -> Result<(Vec<CvoglRecord>, LoadReport)> {
        Self::load_with(root, dataset, split, &LoadOptions::default())
    }

    /// [`CvoglSplit::load`] with options.
    pub fn load_with(
        root: &Path,
        dataset: &str,
        split: &str,
        opts: &LoadOptions,
    ) -> Result<(Vec<CvoglRecord>, LoadReport)> {
        let geometry = opts
            .geometry
            .or_else(|| DatasetGeometry::for_dataset(dataset))
            .ok_or_else(|| OfflineError::UnknownDataset { name: dataset.to_owned() })?;
        let path = Self::locate(root, dataset, split)?;
        let value = read_pth(&path)?;
        let items = value.as_seq().ok_or_else(|| {
            OfflineError::NotPth { reason: format!("top-level object is a {}, expected a list", value.type_name()) }
                .in_file(&path)
        })?;
        let mut records = Vec::with_capacity(items.len());
        let mut skipped = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match CvoglRecord::parse(item).and_then(|r| r.check(&geometry).map(|_| r)) {
                Ok(r) => records.push(r),
                Err(reason) => {
                    let id = item.as_seq().and_then(|f| f.first()).and_then(PyValue::as_i64);
                    if opts.strict {
                        let err = OfflineError::Record { index, id, reason };
                        return Err(err.in_file(&path));
                    }
                    skipped.push(SkippedRecord { index, id, reason });
                }
            }
        }
        let report = LoadReport {
            dataset_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            path,
            geometry,
            total: items.len(),
            loaded: records.len(),
            skipped,
            duplicate_ids: duplicate_ids(&records),
        };
        Ok((records, report))
    }

    /// Find the split file: `<root>/<dataset>_<split>.pth`, else
    /// `<root>/<dataset>/<dataset>_<split>.pth`.
    pub fn locate(root: &Path, dataset: &str, split: &str) -> Result<PathBuf> {
        let name = split_file_name(dataset, split)?;
        let tried = vec![root.join(&name), root.join(dataset).join(&name)];
        match tried.iter().find(|p| p.is_file()) {
            Some(p) => Ok(p.clone()),
            None => Err(OfflineError::SplitNotFound { tried }),
        }
    }
}

/// `<dataset>_<split>.pth` after checking both names.
fn split_file_name(dataset: &str, split: &str) -> Result<String> {
    let ok_chars = !dataset.is_empty() && dataset.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok_chars {
        return Err(OfflineError::InvalidName {
            what: "dataset",
            name: dataset.to_owned(),
            reason: "use ASCII letters, digits, '_' or '-'",
        });
    }
    if !matches!(split, "train" | "val" | "test") {
        return Err(OfflineError::InvalidName {
            what: "split",
            name: split.to_owned(),
            reason: "expected train, val or test",
        });
    }
    Ok(format!("{dataset}_{split}.pth"))
}

/// Write records as `<dataset>_<split>.pth` (zip form). The file goes into `root` if
/// its last component is `dataset`, else into `<root>/<dataset>/` (created), matching
/// the layout [`CvoglSplit::load`] reads. Returns the path written.
pub fn write_split(root: &Path, dataset: &str, split: &str, records: &[CvoglRecord]) -> Result<PathBuf> {
    let name = split_file_name(dataset, split)?;
    let dir = if root.file_name().is_some_and(|n| n == dataset) { root.to_path_buf() } else { root.join(dataset) };
    std::fs::create_dir_all(&dir).map_err(|source| OfflineError::Io { path: dir.clone(), source })?;
    let path = dir.join(name);
    let list = PyValue::List(records.iter().map(CvoglRecord::to_py).collect());
    write_pth(&path, &list)?;
    Ok(path)
}

fn duplicate_ids(records: &[CvoglRecord]) -> Vec<i64> {
    let mut seen = HashSet::new();
    let mut dup: Vec<i64> = records.iter().filter(|r| !seen.insert(r.id)).map(|r| r.id).collect();
    dup.sort_unstable();
    dup.dedup();
    dup
}

/// Field-conversion failures are plain strings; callers add index and id.
type FieldResult<T> = std::result::Result<T, String>;

fn num(v: &PyValue, what: &str) -> FieldResult<f64> {
    let x = v.as_f64().ok_or_else(|| format!("{what}: expected a number, got {}", v.type_name()))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{what}: not finite ({x})"))
    }
}

fn nums<const N: usize>(v: &PyValue, what: &str) -> FieldResult<[f64; N]> {
    let items = v.as_seq().ok_or_else(|| format!("{what}: expected a list or tuple, got {}", v.type_name()))?;
    if items.len() != N {
        return Err(format!("{what}: expected {N} numbers, got {}", items.len()));
    }
    let mut out = [0.0; N];
    for (o, it) in out.iter_mut().zip(items) {
        *o = num(it, what)?;
    }
    Ok(out)
}

fn string(v: &PyValue, what: &str) -> FieldResult<String> {
    v.as_str().map(str::to_owned).ok_or_else(|| format!("{what}: expected a str, got {}", v.type_name()))
}

fn check_file_name(name: &str, what: &str) -> FieldResult<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        Err(format!("{what}: unsafe or empty file name {name:?}"))
    } else {
        Ok(())
    }
}

impl CvoglRecord {
    /// Convert a record (tuple or list of 8 fields) read from a split file.
    pub fn from_py(v: &PyValue) -> Result<CvoglRecord> {
        Self::parse(v).map_err(|reason| OfflineError::InvalidRecord {
            id: v.as_seq().and_then(|f| f.first()).and_then(PyValue::as_i64),
            reason,
        })
    }

    /// Check the record against the dataset geometry (see the module docs).
    pub fn validate(&self, g: &DatasetGeometry) -> Result<()> {
        self.check(g).map_err(|reason| OfflineError::InvalidRecord { id: Some(self.id), reason })
    }

    fn parse(v: &PyValue) -> FieldResult<CvoglRecord> {
        let f = v.as_seq().ok_or_else(|| format!("record is a {}, expected a tuple or list", v.type_name()))?;
        if f.len() != 8 {
            return Err(format!("record has {} fields, expected 8", f.len()));
        }
        let id = f[0].as_i64().ok_or_else(|| format!("id: expected an int, got {}", f[0].type_name()))?;
        let [a, b] = nums::<2>(&f[3], "field 3")?;
        let [cx, cy] = nums::<2>(&f[4], "click")?;
        Ok(CvoglRecord {
            id,
            query_file: string(&f[1], "query file")?,
            sat_file: string(&f[2], "satellite file")?,
            field3: (a, b),
            click: (cx, cy),
            bbox: nums::<4>(&f[5], "box")?,
            polygon: nums::<8>(&f[6], "polygon")?,
            category: string(&f[7], "category")?,
        })
    }

    /// The record as the Python tuple CVOGL stores. Integral field-3 and click values
    /// are written as ints (as in the dataset), boxes and polygons as floats.
    pub fn to_py(&self) -> PyValue {
        let pair = |(x, y): (f64, f64)| PyValue::Tuple(vec![int_or_float(x), int_or_float(y)]);
        let floats = |v: &[f64]| PyValue::List(v.iter().map(|&x| PyValue::Float(x)).collect());
        PyValue::Tuple(vec![
            PyValue::Int(self.id),
            PyValue::Str(self.query_file.clone()),
            PyValue::Str(self.sat_file.clone()),
            pair(self.field3),
            pair(self.click),
            floats(&self.bbox),
            floats(&self.polygon),
            PyValue::Str(self.category.clone()),
        ])
    }

    fn check(&self, g: &DatasetGeometry) -> FieldResult<()> {
        check_file_name(&self.query_file, "query file")?;
        check_file_name(&self.sat_file, "satellite file")?;
        let all_finite = [self.field3.0, self.field3.1, self.click.0, self.click.1]
            .iter()
            .chain(&self.bbox)
            .chain(&self.polygon)
            .all(|x| x.is_finite());
        if !all_finite {
            return Err("a coordinate is not finite".into());
        }
        let [x1, y1, x2, y2] = self.bbox;
        if !(x1 < x2 && y1 < y2) {
            return Err(format!("box {:?} is not ordered x1 < x2, y1 < y2", self.bbox));
        }
        let (sh, sw) = (f64::from(g.sat_hw.0), f64::from(g.sat_hw.1));
        if x2 <= 0.0 || y2 <= 0.0 || x1 >= sw - 1.0 || y1 >= sh - 1.0 {
            return Err(format!("box {:?} lies outside the {sw}x{sh} satellite image", self.bbox));
        }
        let (qh, qw) = (f64::from(g.query_hw.0), f64::from(g.query_hw.1));
        let (cx, cy) = self.click;
        if !(0.0..=qw).contains(&cx) || !(0.0..=qh).contains(&cy) {
            return Err(format!("click ({cx}, {cy}) outside the {qw}x{qh} query image"));
        }
        Ok(())
    }

    /// Path of the query image under the dataset directory.
    pub fn query_path(&self, dataset_dir: &Path) -> PathBuf {
        dataset_dir.join("query").join(&self.query_file)
    }

    /// Path of the satellite image under the dataset directory.
    pub fn sat_path(&self, dataset_dir: &Path) -> PathBuf {
        dataset_dir.join("satellite").join(&self.sat_file)
    }
}

fn int_or_float(x: f64) -> PyValue {
    // Exactly integral values within ±2^53 survive the round trip as ints.
    if x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_992.0 {
        PyValue::Int(x as i64)
    } else {
        PyValue::Float(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::pth::{read_pth, write_pth};
    use crate::offline::test_util::{fixture, TempDir};

    const DRONE: &str = "CVOGL_DroneAerial";

    fn spec_record0() -> CvoglRecord {
        CvoglRecord {
            id: 131425,
            query_file: "131425_539733_4880095.jpg".into(),
            sat_file: "539827_4880079_300_32615.jpg".into(),
            field3: (383.0, 380.0),
            click: (191.0, 190.0),
            bbox: [258.56, 325.97, 592.76, 657.03],
            polygon: [495.99, 325.97, 592.76, 558.05, 355.29, 657.03, 258.56, 424.96],
            category: "building_retail".into(),
        }
    }

    /// `<tmp>/CVOGL_DroneAerial/CVOGL_DroneAerial_test.pth` = a copy of a fixture.
    fn layout_with(fixture_name: &str) -> TempDir {
        let dir = TempDir::new("cvogl");
        let ds = dir.path().join(DRONE);
        std::fs::create_dir_all(&ds).unwrap();
        std::fs::copy(fixture(fixture_name), ds.join(format!("{DRONE}_test.pth"))).unwrap();
        dir
    }

    #[test]
    fn loads_both_sample_forms_from_parent_or_dataset_dir() {
        let mut all = Vec::new();
        for name in ["records_zip.pth", "records_legacy.pth"] {
            let dir = layout_with(name);
            for root in [dir.path().to_path_buf(), dir.path().join(DRONE)] {
                let (recs, report) = CvoglSplit::load(&root, DRONE, "test").unwrap();
                assert_eq!((report.total, report.loaded), (3, 3), "{name}");
                assert!(report.skipped.is_empty() && report.duplicate_ids.is_empty());
                assert_eq!(report.dataset_dir, dir.path().join(DRONE));
                assert_eq!(recs[0], spec_record0());
                all.push(recs);
            }
        }
        assert!(all.windows(2).all(|w| w[0] == w[1]));
        let r2 = &all[0][2];
        assert_eq!((r2.id, r2.click, r2.bbox), (8, (256.0, 1.0), [900.0, 1000.0, 1023.0, 1023.0]));
        assert_eq!(r2.sat_path(Path::new("/d")), Path::new("/d/satellite/500350_4800410_300_32615.jpg"));
    }

    #[test]
    fn to_py_reproduces_the_stored_python_value() {
        let stored = read_pth(&fixture("records_zip.pth")).unwrap();
        let stored = stored.as_seq().unwrap();
        for item in stored {
            let rec = CvoglRecord::from_py(item).unwrap();
            assert_eq!(&rec.to_py(), item);
        }
    }

    #[test]
    fn write_split_round_trips() {
        let dir = TempDir::new("cvogl-w");
        let mut r = spec_record0();
        r.click = (12.5, 0.0);
        r.field3 = (-3.0, 1e20);
        let recs = vec![spec_record0(), r];
        let path = write_split(dir.path(), "CVOGL_SVI", "val", &recs).unwrap();
        assert_eq!(path, dir.path().join("CVOGL_SVI/CVOGL_SVI_val.pth"));
        let (back, report) = CvoglSplit::load(dir.path(), "CVOGL_SVI", "val").unwrap();
        assert_eq!(back, recs);
        assert_eq!(report.geometry.query_hw, (256, 512));
        // Root already naming the dataset: the file goes straight into it.
        let p2 = write_split(&dir.path().join("CVOGL_SVI"), "CVOGL_SVI", "test", &recs).unwrap();
        assert_eq!(p2, dir.path().join("CVOGL_SVI/CVOGL_SVI_test.pth"));
    }

    fn with(f: impl FnOnce(&mut CvoglRecord)) -> PyValue {
        let mut r = spec_record0();
        f(&mut r);
        r.to_py()
    }

    #[test]
    fn invalid_records_are_skipped_with_reasons_or_fail_in_strict_mode() {
        let mut short = spec_record0().to_py();
        if let PyValue::Tuple(f) = &mut short {
            f.pop();
        }
        let mut bad_type = spec_record0().to_py();
        if let PyValue::Tuple(f) = &mut bad_type {
            f[5] = PyValue::Str("box".into());
        }
        let items = vec![
            spec_record0().to_py(),
            with(|r| r.bbox[0] = f64::NAN),
            with(|r| r.bbox = [10.0, 10.0, 5.0, 20.0]),
            with(|r| r.click = (300.0, 10.0)),
            with(|r| r.sat_file = "../../etc/passwd".into()),
            with(|r| r.bbox = [1100.0, 10.0, 1200.0, 20.0]),
            short,
            bad_type,
            PyValue::Int(5),
            with(|r| r.click = (256.0, 256.0)), // on the border: valid
        ];
        let dir = TempDir::new("cvogl-bad");
        let ds = dir.path().join(DRONE);
        std::fs::create_dir_all(&ds).unwrap();
        write_pth(&ds.join(format!("{DRONE}_train.pth")), &PyValue::List(items)).unwrap();

        let (recs, report) = CvoglSplit::load(dir.path(), DRONE, "train").unwrap();
        assert_eq!((report.total, recs.len()), (10, 2));
        assert_eq!(report.duplicate_ids, vec![131425]);
        let idx: Vec<usize> = report.skipped.iter().map(|s| s.index).collect();
        assert_eq!(idx, [1, 2, 3, 4, 5, 6, 7, 8]);
        let reason = |i: usize| report.skipped[i].reason.as_str();
        assert!(reason(0).contains("not finite"), "{}", reason(0));
        assert!(reason(1).contains("not ordered"), "{}", reason(1));
        assert!(reason(2).contains("click"), "{}", reason(2));
        assert!(reason(3).contains("unsafe"), "{}", reason(3));
        assert!(reason(4).contains("outside"), "{}", reason(4));
        assert!(reason(5).contains("7 fields"), "{}", reason(5));
        assert!(reason(6).contains("box: expected a list"), "{}", reason(6));
        assert_eq!(report.skipped[0].id, Some(131425));
        assert_eq!(report.skipped[7].id, None);

        let strict = LoadOptions { strict: true, ..LoadOptions::default() };
        let err = CvoglSplit::load_with(dir.path(), DRONE, "train", &strict).unwrap_err();
        match err {
            OfflineError::InFile { source, .. } => {
                assert!(matches!(*source, OfflineError::Record { index: 1, id: Some(131425), .. }), "{source}")
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn click_bounds_follow_the_dataset_geometry() {
        let r = CvoglRecord { click: (400.0, 100.0), ..spec_record0() };
        let svi = DatasetGeometry::for_dataset("CVOGL_SVI").unwrap();
        let drone = DatasetGeometry::for_dataset(DRONE).unwrap();
        assert!(r.validate(&svi).is_ok());
        assert!(matches!(r.validate(&drone), Err(OfflineError::InvalidRecord { id: Some(131425), .. })));
    }

    #[test]
    fn names_and_missing_files_are_errors() {
        let dir = TempDir::new("cvogl-names");
        let load = |ds: &str, split: &str| CvoglSplit::load(dir.path(), ds, split).unwrap_err();
        assert!(matches!(load(DRONE, "test"), OfflineError::SplitNotFound { ref tried } if tried.len() == 2));
        assert!(matches!(load(DRONE, "../x"), OfflineError::InvalidName { what: "split", .. }));
        assert!(matches!(load("Other", "test"), OfflineError::UnknownDataset { .. }));
        let opts = LoadOptions { strict: false, geometry: DatasetGeometry::for_dataset(DRONE) };
        let err = CvoglSplit::load_with(dir.path(), "../evil", "test", &opts).unwrap_err();
        assert!(matches!(err, OfflineError::InvalidName { what: "dataset", .. }));
    }
}
