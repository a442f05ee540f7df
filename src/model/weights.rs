//! Weight files: strict safetensors loading (both directions, exact shapes, the
//! release's expert-pool alias keys checked, SMGEO_SPEC §9), saving, and import of
//! official SMGeo checkpoints and Swin-T ImageNet weights (timm or Microsoft layout,
//! bias tables resized from window 7 to 8 with timm's method, SWIN_FACTS §11–12).
//!
//! `.pth` files are pickles that need PyTorch to read: `deploy/pth_to_safetensors.py`
//! flattens one into safetensors with the original key names; everything else
//! (renaming, resizing, checks) happens here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::{ModelError, Result};

/// Tensors of a safetensors file, in file order of names (sorted).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::Io(format!("reading weights {}: {e}", path.display())))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::Weights(format!("{}: not a valid safetensors file ({e})", path.display())))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::U8 => Kind::Uint8,
            d => {
                return Err(ModelError::Weights(format!(
                    "{}: tensor {name} has unsupported dtype {d:?}",
                    path.display()
                )))
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Write tensors (moved to CPU, made contiguous) with optional string metadata.
pub fn write_safetensors(
    tensors: &BTreeMap<String, Tensor>,
    meta: &BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let cpu: Vec<(String, Tensor)> =
        tensors.iter().map(|(k, t)| (k.clone(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    let mut data: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = Vec::new();
    for (k, t) in &cpu {
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Double => Dtype::F64,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            k2 => return Err(ModelError::Weights(format!("cannot save {k}: dtype {k2:?}"))),
        };
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut buf = vec![0u8; n];
        t.f_copy_data_u8(&mut buf, t.numel())?;
        data.push((k.clone(), buf, dtype, t.size().iter().map(|&d| d as usize).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, b, d, s)| {
            Ok((
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map_err(|e| ModelError::Weights(e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = meta.clone().into_iter().collect();
    safetensors::serialize_to_file(views, &Some(meta), path)
        .map_err(|e| ModelError::Io(format!("writing {}: {e}", path.display())))
}

/// `backbone.stages.{i}.blocks.{j}.ffn.expert_pool.X` → `backbone.stages.{i}.expert_pool.X`.
pub fn alias_target(key: &str) -> Option<String> {
    let (head, rest) = key.split_once(".ffn.expert_pool.")?;
    let stage_prefix = head.rsplit_once(".blocks.")?.0;
    Some(format!("{stage_prefix}.expert_pool.{rest}"))
}

/// Outcome of a load; `Display` is the readable report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (key, expected shape, file shape / dtype)
    pub mismatched: Vec<(String, Vec<i64>, String)>,
    pub aliases_checked: usize,
    pub ignored: Vec<String>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} tensors loaded, {} alias keys verified", self.loaded, self.aliases_checked)?;
        let list = |f: &mut std::fmt::Formatter<'_>, what: &str, v: &[String]| -> std::fmt::Result {
            if !v.is_empty() {
                writeln!(f, "{} {what}:", v.len())?;
                for k in v.iter().take(12) {
                    writeln!(f, "  {k}")?;
                }
                if v.len() > 12 {
                    writeln!(f, "  … and {} more", v.len() - 12)?;
                }
            }
            Ok(())
        };
        list(f, "missing from the file", &self.missing)?;
        list(f, "unexpected in the file", &self.unexpected)?;
        let mm: Vec<String> = self.mismatched.iter().map(|(k, e, g)| format!("{k}: model {e:?}, file {g}")).collect();
        list(f, "with wrong shape or dtype", &mm)
    }
}

/// Guess which preset a set of keys was saved from.
pub fn guess_preset(keys: impl Iterator<Item = impl AsRef<str>>) -> &'static str {
    let mut has_bias = false;
    let mut has_backbone = false;
    for k in keys {
        let k = k.as_ref();
        has_bias |= k.ends_with("relative_position_bias_table");
        has_backbone |= k.starts_with("backbone.");
    }
    match (has_backbone, has_bias) {
        (true, true) => "paper",
        (true, false) => "release",
        (false, _) => "not an SMGeo checkpoint (no backbone.* keys; a Swin ImageNet file needs `smgeo weights import`)",
    }
}

/// Copy `file` tensors into the VarStore. `strict`: every model variable must be in
/// the file and every file key used (alias keys must equal their canonical tensor,
/// `num_batches_tracked` is ignored). Non-strict: missing keys are allowed (partial
/// init, e.g. from ImageNet), unexpected keys and wrong shapes are still errors.
pub fn load_tensors(vs: &VarStore, file: &BTreeMap<String, Tensor>, strict: bool, origin: &str) -> Result<LoadReport> {
    let vars = vs.variables();
    let mut rep = LoadReport::default();
    for (k, t) in file {
        if k.ends_with("num_batches_tracked") {
            rep.ignored.push(k.clone());
            continue;
        }
        if let Some(canon) = alias_target(k) {
            if vars.contains_key(&canon) {
                match file.get(&canon) {
                    Some(c) if c.size() == t.size() && c.kind() == t.kind() && c.equal(t) => rep.aliases_checked += 1,
                    Some(_) => {
                        rep.mismatched.push((k.clone(), vec![], format!("differs from its canonical copy {canon}")))
                    }
                    None => rep.mismatched.push((k.clone(), vec![], format!("alias of {canon}, which is absent"))),
                }
                continue;
            }
        }
        match vars.get(k) {
            None => rep.unexpected.push(k.clone()),
            Some(v) if v.size() != t.size() || !t.is_floating_point() => {
                rep.mismatched.push((k.clone(), v.size(), format!("{:?} {:?}", t.size(), t.kind())))
            }
            Some(_) => {}
        }
    }
    for k in vars.keys() {
        if !file.contains_key(k) {
            rep.missing.push(k.clone());
        }
    }
    rep.missing.sort();
    let fatal = !rep.unexpected.is_empty() || !rep.mismatched.is_empty() || (strict && !rep.missing.is_empty());
    if fatal {
        let guess = guess_preset(file.keys());
        return Err(ModelError::Weights(format!(
            "{origin} does not fit this model (file looks like: {guess}):\n{rep}"
        )));
    }
    tch::no_grad(|| {
        for (k, v) in &vars {
            if let Some(t) = file.get(k) {
                let mut v = v.shallow_clone();
                v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
                rep.loaded += 1;
            }
        }
    });
    Ok(rep)
}

/// Read and strictly load a safetensors file.
pub fn load_file(vs: &VarStore, path: &Path, strict: bool) -> Result<LoadReport> {
    let file = read_safetensors(path)?;
    load_tensors(vs, &file, strict, &path.display().to_string())
}

/// All model variables (BN running stats included) for saving.
pub fn state_dict(vs: &VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().collect()
}

/// Map an official SMGeo checkpoint (flattened to safetensors, maybe `module.`-prefixed
/// from DataParallel) to our keys: strip the prefix; everything else already matches.
pub fn import_smgeo(file: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    file.into_iter().map(|(k, t)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), t)).collect()
}

/// Map a Swin-T ImageNet checkpoint (timm or Microsoft layout) to this project's
/// backbone keys, for window `win`. The query patch embed gets the RGB weights plus a
/// zero click channel. Classifier head, index and mask buffers are dropped.
pub fn import_swin(file: BTreeMap<String, Tensor>, win: i64, query_chans: i64) -> Result<BTreeMap<String, Tensor>> {
    let file: BTreeMap<String, Tensor> = file
        .into_iter()
        .map(|(k, t)| (k.strip_prefix("module.").or(k.strip_prefix("backbone.")).map(str::to_string).unwrap_or(k), t))
        .collect();
    let microsoft = file.contains_key("layers.0.downsample.reduction.weight");
    if !file.contains_key("patch_embed.proj.weight") {
        return Err(ModelError::Weights("not a Swin checkpoint: no patch_embed.proj.weight".into()));
    }
    let mut out = BTreeMap::new();
    for (k, t) in file {
        if k.ends_with("relative_position_index") || k.ends_with("attn_mask") || k.starts_with("head.") {
            continue;
        }
        let nk = if let Some(r) = k.strip_prefix("patch_embed.") {
            if r == "proj.weight" {
                let s = t.size();
                let extra = Tensor::zeros([s[0], query_chans - s[1], s[2], s[3]], (t.kind(), t.device()));
                out.insert("backbone.patch_embeds.query.proj.weight".into(), Tensor::cat(&[&t, &extra], 1));
            } else {
                out.insert(format!("backbone.patch_embeds.query.{r}"), t.copy());
            }
            format!("backbone.patch_embeds.sat.{r}")
        } else if let Some(r) = k.strip_prefix("layers.") {
            let (n, rest) = r.split_once('.').ok_or_else(|| ModelError::Weights(format!("odd key {k}")))?;
            let n: i64 = n.parse().map_err(|_| ModelError::Weights(format!("odd key {k}")))?;
            if let Some(d) = rest.strip_prefix("downsample.") {
                let idx = if microsoft { n } else { n - 1 };
                format!("backbone.downsamples.{idx}.{d}")
            } else {
                let rest = rest
                    .replace(".attn.qkv.weight", ".attn.in_proj_weight")
                    .replace(".attn.qkv.bias", ".attn.in_proj_bias")
                    .replace(".attn.proj.", ".attn.out_proj.")
                    .replace(".mlp.fc1.", ".ffn.0.")
                    .replace(".mlp.fc2.", ".ffn.2.");
                format!("backbone.stages.{n}.{rest}")
            }
        } else if let Some(r) = k.strip_prefix("norm.") {
            format!("backbone.norm.{r}")
        } else {
            return Err(ModelError::Weights(format!("unknown Swin key {k}")));
        };
        let t = if nk.ends_with("relative_position_bias_table") { resize_bias_table(&t, win)? } else { t };
        out.insert(nk, t);
    }
    Ok(out)
}

/// Resize a (S², nH) relative position bias table (S = 2w−1, square) to window `win`
/// with timm's default method: geometric-progression source coordinates, separable
/// piecewise-linear interpolation, edge values outside (SWIN_FACTS §12).
pub fn resize_bias_table(table: &Tensor, win: i64) -> Result<Tensor> {
    let (rows, heads) = table.size2().map_err(|_| ModelError::Weights("bias table is not 2-D".into()))?;
    let src = (rows as f64).sqrt().round() as i64;
    let dst = 2 * win - 1;
    if src * src != rows {
        return Err(ModelError::Weights(format!("bias table with {rows} rows is not square")));
    }
    if src == dst {
        return Ok(table.shallow_clone());
    }
    let (src_half, dst_half) = (src / 2, dst / 2);
    let gp = |q: f64| (1.0 - q.powi(src_half as i32)) / (1.0 - q);
    let (mut lo, mut hi, mut q) = (1.01f64, 1.5f64, 1.01f64);
    while hi - lo > 1e-6 {
        q = (lo + hi) / 2.0;
        if gp(q) > dst_half as f64 {
            hi = q;
        } else {
            lo = q;
        }
    }
    let mut dis = Vec::new();
    let mut cur = 1.0;
    for i in 0..src_half {
        dis.push(cur);
        cur += q.powi(i as i32 + 1);
    }
    let mut xs: Vec<f64> = dis.iter().rev().map(|d| -d).collect();
    xs.push(0.0);
    xs.extend(&dis);
    let ts: Vec<f64> = (-dst_half..=dst_half).map(|v| v as f64).collect();
    // linear interpolation weights along one axis: target t → (i0, i1, w1)
    let interp: Vec<(usize, usize, f64)> = ts
        .iter()
        .map(|&t| {
            if t <= xs[0] {
                return (0, 0, 0.0);
            }
            if t >= xs[xs.len() - 1] {
                return (xs.len() - 1, xs.len() - 1, 0.0);
            }
            let i = xs.iter().rposition(|&x| x <= t).unwrap_or(0);
            let w1 = (t - xs[i]) / (xs[i + 1] - xs[i]);
            (i, i + 1, w1)
        })
        .collect();
    let vals: Vec<f32> =
        Vec::<f32>::try_from(table.to_kind(Kind::Float).to_device(Device::Cpu).contiguous().flatten(0, -1))?;
    let (s, d, h) = (src as usize, dst as usize, heads as usize);
    let at = |y: usize, x: usize, k: usize| vals[(y * s + x) * h + k] as f64;
    let mut out = vec![0f32; d * d * h];
    for (ty, &(y0, y1, wy)) in interp.iter().enumerate() {
        for (tx, &(x0, x1, wx)) in interp.iter().enumerate() {
            for k in 0..h {
                let top = at(y0, x0, k) * (1.0 - wx) + at(y0, x1, k) * wx;
                let bot = at(y1, x0, k) * (1.0 - wx) + at(y1, x1, k) * wx;
                out[(ty * d + tx) * h + k] = (top * (1.0 - wy) + bot * wy) as f32;
            }
        }
    }
    Ok(Tensor::from_slice(&out).view([dst * dst, heads]))
}
