//! Fresh samples from the world of a synthetic CVOGL dataset: the training data of
//! `smgeo synth cvogl` is a finite draw (samples `0..N`, one ChaCha stream each) from a
//! procedural world, so a trainer can keep drawing from the same distribution (streams
//! `N, N+1, …`) instead of repeating the files. The manifest written next to the dataset
//! names everything needed: the world (seed and size, or the scene), the sample config,
//! the sample seed and the JPEG quality. Sample `k` is the same wherever and whenever it
//! is drawn, and stream `k < N` reproduces the file written for record `k`.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::cvogl::{make_sample, SampleConfig};
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

    /// Sample of stream `k` (id `k`), at full size, after the same JPEG round trip as
    /// the written files.
    pub fn sample(&self, k: u64) -> anyhow::Result<Sample> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(k);
        let s = make_sample(&self.world, &mut rng, &self.cfg)?;
        let rt = |img: &RgbImage| -> anyhow::Result<RgbImage> {
            let mut buf = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, self.jpeg_quality).encode_image(img)?;
            Ok(image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg)?.to_rgb8())
        };
        Ok(Sample {
            id: k as i64,
            query: rt(&s.query)?,
            sat: rt(&s.sat)?,
            click: s.click,
            bbox: s.bbox,
            category: s.category,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::dataset::Dataset;

    /// A tiny synthetic CVOGL dataset (2 train, 1 val, 0 test) in `dir`.
    fn tiny_synth_dataset(dir: &Path, seed: u64) {
        let a = crate::synth::cli::CvoglArgs {
            out: dir.to_path_buf(),
            n_train: 2,
            n_val: 1,
            n_test: 0,
            seed,
            dataset: "CVOGL_DroneAerial".into(),
            world_km: 1.0,
            threads: Some(2),
            jpeg_quality: 90,
            scene: None,
            sample_config: None,
        };
        crate::synth::cli::run_cvogl(&a).unwrap();
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
            let x = f.sample(i as u64).unwrap();
            assert!(x.query == disk.query && x.sat == disk.sat, "stream {i} differs from the written sample");
            assert_eq!((x.click, x.bbox, x.category.as_str()), (disk.click, disk.bbox, disk.category.as_str()));
        }
        let new = f.sample(2).unwrap();
        assert!(new.sat != ds.load(0).unwrap().sat && new.sat != ds.load(1).unwrap().sat);
        let again = f.sample(2).unwrap();
        assert!(again.sat == new.sat && again.bbox == new.bbox, "a stream is drawn the same every time");
        // the val split has its own world
        let v = FreshSampler::open(dir.path(), "val").unwrap();
        assert!(v.sample(0).unwrap().sat != f.sample(0).unwrap().sat);
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
