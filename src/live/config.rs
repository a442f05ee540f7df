//! `config/live.toml`: everything `smgeo run` / `smgeo replay` need, validated at load.
//! Relative paths are taken relative to the config file's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::engine::TrackConfig;
use super::localiser::LocaliserConfig;
use crate::ingest::{Codec, SourceConfig, SourceKind};
use crate::model::{ModelConfig, Preset};

/// Errors reading the live configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{path}: {field}: {reason}")]
    Invalid { path: String, field: String, reason: String },
}

/// Which weights and model configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A training checkpoint folder (`weights.safetensors` + `model.json`), e.g. `runs/x/best`.
    pub checkpoint: Option<PathBuf>,
    /// Or a safetensors file plus `config` (model JSON/TOML) or `preset`.
    pub weights: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub preset: Option<Preset>,
}

impl ModelSection {
    /// (model config, weights file).
    pub fn resolve(&self) -> Result<(ModelConfig, PathBuf), String> {
        if let Some(dir) = &self.checkpoint {
            let cfg = ModelConfig::from_file(&dir.join("model.json")).map_err(|e| e.to_string())?;
            return Ok((cfg, dir.join("weights.safetensors")));
        }
        let w = self.weights.clone().ok_or("set model.checkpoint, or model.weights with model.config/preset")?;
        let cfg = match (&self.config, self.preset) {
            (Some(p), _) => ModelConfig::from_file(p).map_err(|e| e.to_string())?,
            (None, Some(p)) => ModelConfig::preset(p),
            (None, None) => ModelConfig::preset(Preset::Paper),
        };
        Ok((cfg, w))
    }
}

/// MQTT broker settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    /// Password, or the name of an environment variable holding it (`password_env`).
    pub password: Option<String>,
    pub password_env: Option<String>,
    /// Topic prefix; `{stream}` is replaced by the stream id. Default `smgeo/{stream}`.
    pub topic_prefix: Option<String>,
    /// Spool folder for targets while the broker is down (one sub-folder per stream).
    pub spool_dir: Option<PathBuf>,
    pub keep_alive_s: u64,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            host: "127.0.0.1".into(),
            port: 1883,
            username: None,
            password: None,
            password_env: None,
            topic_prefix: None,
            spool_dir: None,
            keep_alive_s: 10,
        }
    }
}

/// One video stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// Stream id (topics `smgeo/<id>/...`).
    pub id: String,
    pub source: SourceKind,
    #[serde(default)]
    pub codec: Codec,
    /// Frames held for prompts that name an earlier PTS.
    #[serde(default = "default_ring")]
    pub ring_frames: usize,
    /// A prompt's frame must be within this of its `pts_ns`.
    #[serde(default = "default_tolerance")]
    pub frame_tolerance_ms: u64,
    /// Chip centre `[lon, lat]` when the KLV gives none.
    #[serde(default)]
    pub fallback_centre: Option<[f64; 2]>,
    /// Source stall timeout and reconnect backoff, ms.
    #[serde(default = "default_stall")]
    pub stall_timeout_ms: u64,
}

fn default_ring() -> usize {
    30
}
fn default_tolerance() -> u64 {
    500
}
fn default_stall() -> u64 {
    2000
}

impl StreamSection {
    pub fn source_config(&self) -> SourceConfig {
        let mut s = SourceConfig::new(self.source.clone());
        s.codec = self.codec;
        s.ring_capacity = self.ring_frames.max(1);
        s.stall_timeout_ms = self.stall_timeout_ms;
        s
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Intra-op threads (default: all cores).
    #[serde(default)]
    pub threads: Option<i32>,
    pub model: ModelSection,
    /// Mosaic: a raster, a VRT, a folder of tiles, or a glob.
    pub mosaic: PathBuf,
    #[serde(default)]
    pub localiser: LocaliserConfig,
    #[serde(default)]
    pub track: TrackConfig,
    #[serde(default)]
    pub mqtt: MqttSection,
    #[serde(default)]
    pub streams: Vec<StreamSection>,
}

fn default_device() -> String {
    "auto".into()
}

impl LiveConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: p.clone(), source })?;
        let mut cfg: LiveConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p.clone(), msg: e.to_string() })?;
        cfg.rebase(path.parent().unwrap_or(Path::new(".")));
        cfg.validate().map_err(|(field, reason)| ConfigError::Invalid { path: p, field, reason })?;
        Ok(cfg)
    }

    /// Make relative paths relative to `base`.
    pub fn rebase(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.mosaic);
        for p in [&mut self.model.checkpoint, &mut self.model.weights, &mut self.model.config, &mut self.mqtt.spool_dir]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        for s in &mut self.streams {
            if let SourceKind::File { path } = &mut s.source {
                fix(path);
            }
        }
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((f.to_string(), r));
        self.localiser.validate().map_err(|e| ("localiser".to_string(), e.to_string()))?;
        if self.track.interval_ms == 0 || !(self.track.max_s > 0.0) {
            return bad("track", "interval_ms must be > 0 and max_s > 0".into());
        }
        if self.model.checkpoint.is_none() && self.model.weights.is_none() {
            return bad("model", "set checkpoint or weights".into());
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.streams {
            if s.id.is_empty() || s.id.contains(['/', '+', '#']) {
                return bad("streams.id", format!("{:?}: must be non-empty without / + #", s.id));
            }
            if !seen.insert(&s.id) {
                return bad("streams.id", format!("{:?} appears twice", s.id));
            }
            if let Some([lon, lat]) = s.fallback_centre {
                if !((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat)) {
                    return bad("streams.fallback_centre", format!("[{lon}, {lat}] is not a lon/lat pair"));
                }
            }
        }
        if let Some(t) = self.threads {
            if t < 1 {
                return bad("threads", "must be at least 1".into());
            }
        }
        Ok(())
    }

    /// The MQTT password from `password` or the environment variable `password_env`.
    pub fn mqtt_password(&self) -> Option<String> {
        self.mqtt.password.clone().or_else(|| self.mqtt.password_env.as_ref().and_then(|v| std::env::var(v).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rebases_and_rejects() {
        let text = r#"
            mosaic = "scene/mosaic.tif"
            [model]
            checkpoint = "runs/demo/best"
            [[streams]]
            id = "uav1"
            source = { kind = "udp_ts", address = "0.0.0.0", port = 5600 }
            fallback_centre = [15.0, 47.8]
        "#;
        let mut c: LiveConfig = toml::from_str(text).unwrap();
        c.rebase(Path::new("/etc/smgeo"));
        assert_eq!(c.mosaic, PathBuf::from("/etc/smgeo/scene/mosaic.tif"));
        assert_eq!(c.model.checkpoint.as_deref(), Some(Path::new("/etc/smgeo/runs/demo/best")));
        assert!(c.validate().is_ok());
        let mut d = c.clone();
        d.streams.push(d.streams[0].clone());
        assert!(d.validate().unwrap_err().1.contains("twice"));
        let mut e = c.clone();
        e.streams[0].fallback_centre = Some([200.0, 0.0]);
        assert!(e.validate().is_err());
        let mut f = c.clone();
        f.localiser.chip_gsd_m = -1.0;
        assert!(f.validate().is_err());
        assert!(toml::from_str::<LiveConfig>("mosaic = 'x'\nbogus = 1\n[model]\nweights='w'").is_err());
    }

    #[test]
    fn shipped_live_config_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/live.toml");
        let c = LiveConfig::from_file(&p).unwrap();
        assert_eq!(c.streams.len(), 1);
        assert!(c.mosaic.ends_with(".cache/demo/scene/mosaic.tif"));
    }
}
