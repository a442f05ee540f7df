//! Fresh samples from the world of a synthetic CVOGL dataset: the training data of
//! `smgeo synth cvogl` is a finite draw (chips `0..N`, one ChaCha stream each, each chip
//! with its `queries_per_chip` prompts) from a procedural world, so a trainer can keep
//! drawing from the same distribution (streams `N, N+1, …`) instead of repeating the
//! files. The manifest written next to the dataset names everything needed: the world
//! (seed and size, or the scene), the sample config, the sample seed and the JPEG
//! quality. Chip `g` is the same wherever and whenever it is drawn, and stream `g < N`
//! reproduces the files written for its records.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::cvogl::{make_group, SampleConfig};
use super::world::World;
use crate::offline::dataset::Sample;

/// A split's world and sampling, read from `manifest.json`.
#[derive(Debug)]
pub struct FreshSampler {
    world: World,
    seed: u64,
    cfg: SampleConfig,
    jpeg_quality: u8,
    pub manifest: PathBuf,
}

impl FreshSampler {
    /// `data`: the folder given to `synth cvogl --out`, or its `<dataset>/` subfolder.
    pub fn open(data: &Path, split: &str) -> anyhow::Result<Self> {
        let manifest = [data.join("manifest.json"), data.join("../manifest.json")]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no manifest.json (fresh samples need a dataset written by `smgeo synth cvogl`)",
                    data.display()
                )
            })?;
        let text = std::fs::read_to_string(&manifest).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
        let m: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
        let field = |v: &serde_json::Value, what: &str| -> anyhow::Result<u64> {
            v.as_u64().ok_or_else(|| {
                anyhow::anyhow!("{}: `{what}` missing (written by an older smgeo? regenerate)", manifest.display())
            })
        };
        let sp = &m["splits"][split];
        let seed = field(&sp["sample_seed"], &format!("splits.{split}.sample_seed"))?;
        let cfg: SampleConfig = serde_json::from_value(m["sample_config"].clone())
            .map_err(|e| anyhow::anyhow!("{}: sample_config: {e}", manifest.display()))?;
        cfg.validate()?;
        let jpeg_quality = u8::try_from(field(&m["jpeg_quality"], "jpeg_quality")?)
            .map_err(|_| anyhow::anyhow!("{}: jpeg_quality out of range", manifest.display()))?;
        let world = match m["scene"]["dir"].as_str() {
            Some(dir) => super::cli::scene_world(Path::new(dir))?,
            None => {
                let km = m["world_km"]
                    .as_f64()
                    .filter(|k| *k > 0.0 && *k <= 100.0)
                    .ok_or_else(|| anyhow::anyhow!("{}: `world_km` missing or out of range", manifest.display()))?;
                World::generate(field(&sp["world_seed"], &format!("splits.{split}.world_seed"))?, (km * 1e3, km * 1e3))
            }
        };
        Ok(FreshSampler { world, seed, cfg, jpeg_quality, manifest })
    }

    /// Prompts per chip of this dataset ([`SampleConfig::queries_per_chip`]).
    pub fn queries_per_chip(&self) -> usize {
        self.cfg.queries_per_chip
    }

    /// The samples of chip `g` (stream `g`; ids `g·k ..`, k = prompts per chip), at full
    /// size, after the same JPEG round trip as the written files.
    pub fn group(&self, g: u64) -> anyhow::Result<Vec<Sample>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(g);
        let grp = make_group(&self.world, &mut rng, &self.cfg)?;
        let rt = |img: &RgbImage| -> anyhow::Result<RgbImage> {
            let mut buf = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, self.jpeg_quality).encode_image(img)?;
            Ok(image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg)?.to_rgb8())
        };
        let sat = match grp.first() {
            Some(s) => rt(&s.sat)?,
            None => anyhow::bail!("chip {g}: no sample drawn"),
        };
        let k = self.cfg.queries_per_chip as u64;
        grp.into_iter()
            .enumerate()
            .map(|(j, s)| {
                Ok(Sample {
                    id: (g * k + j as u64) as i64,
                    query: rt(&s.query)?,
                    sat: sat.clone(),
                    click: s.click,
                    bbox: s.bbox,
                    category: s.category,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::dataset::Dataset;

    /// A tiny synthetic CVOGL dataset (2 train, 1 val, 0 test) in `dir`.
    fn tiny_synth_dataset(dir: &Path, seed: u64) {
        synth_dataset(dir, seed, 2, None);
    }

    fn synth_dataset(dir: &Path, seed: u64, n_train: usize, queries_per_chip: Option<usize>) {
        let a = crate::synth::cli::CvoglArgs::small(dir, n_train, seed, queries_per_chip);
        crate::synth::cli::run_cvogl(&a).unwrap();
    }

    /// The lone prompt of chip `g` (one prompt per chip: sample `g`).
    fn one(f: &FreshSampler, g: u64) -> Sample {
        f.group(g).unwrap().swap_remove(0)
    }

    #[test]
    fn streams_below_n_reproduce_the_written_files_and_later_ones_are_new() {
        let dir = tempfile::tempdir().unwrap();
        tiny_synth_dataset(dir.path(), 5);
        let ds = Dataset::open(dir.path(), "CVOGL_DroneAerial", "train", true).unwrap();
        // the dataset folder itself works as well as its parent
        let f = FreshSampler::open(&dir.path().join("CVOGL_DroneAerial"), "train").unwrap();
        for i in 0..2 {
            let disk = ds.load(i).unwrap();
            let x = one(&f, i as u64);
            assert!(x.query == disk.query && x.sat == disk.sat, "stream {i} differs from the written sample");
            assert_eq!((x.click, x.bbox, x.category.as_str()), (disk.click, disk.bbox, disk.category.as_str()));
        }
        let new = one(&f, 2);
        assert!(new.sat != ds.load(0).unwrap().sat && new.sat != ds.load(1).unwrap().sat);
        let again = one(&f, 2);
        assert!(again.sat == new.sat && again.bbox == new.bbox, "a stream is drawn the same every time");
        // the val split has its own world
        let v = FreshSampler::open(dir.path(), "val").unwrap();
        assert!(one(&v, 0).sat != one(&f, 0).sat);
    }

    #[test]
    fn chips_with_several_prompts_reproduce_their_files() {
        let dir = tempfile::tempdir().unwrap();
        synth_dataset(dir.path(), 6, 3, Some(2));
        let ds = Dataset::open(dir.path(), "CVOGL_DroneAerial", "train", true).unwrap();
        // 3 records on 2 chips: the first chip's two prompts share its satellite file
        assert_eq!(ds.chip_groups(3, 0), vec![vec![0, 1], vec![2]]);
        assert_eq!(ds.records[0].sat_file, ds.records[1].sat_file);
        assert_ne!(ds.records[1].sat_file, ds.records[2].sat_file);
        assert_eq!(ds.chip_groups(3, 1), vec![vec![0], vec![1], vec![2]]);
        let f = FreshSampler::open(dir.path(), "train").unwrap();
        assert_eq!(f.queries_per_chip(), 2);
        let disk: Vec<Sample> = ds.load_group(&[0, 1]).into_iter().map(|s| s.unwrap()).collect();
        let fresh = f.group(0).unwrap();
        assert_eq!(fresh.len(), 2);
        for (x, d) in fresh.iter().zip(&disk) {
            assert!(x.query == d.query && x.sat == d.sat, "sample {} differs from its files", d.id);
            assert_eq!((x.id, x.click, x.bbox), (d.id, d.click, d.bbox));
        }
        // two prompts on one chip: the same image, different queries and targets
        assert!(disk[0].sat == disk[1].sat && disk[0].query != disk[1].query);
        assert_ne!(disk[0].bbox, disk[1].bbox);
        let third = one(&f, 1);
        assert!(third.query == ds.load(2).unwrap().query && third.id == 2);
    }

    #[test]
    fn a_dataset_without_manifest_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = FreshSampler::open(dir.path(), "train").unwrap_err().to_string();
        assert!(e.contains("manifest.json"), "{e}");
        std::fs::write(dir.path().join("manifest.json"), r#"{"splits": {"train": {"n": 3}}}"#).unwrap();
        let e = FreshSampler::open(dir.path(), "train").unwrap_err().to_string();
        assert!(e.contains("sample_seed"), "{e}");
    }
}
