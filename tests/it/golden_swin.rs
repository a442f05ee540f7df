//! The paper preset's Swin path (shift + mask + relative position bias + padding) vs
//! timm's Swin golden tensors (tests/fixtures/golden/swin_tiny_*). Tolerance from
//! SWIN_FACTS §13: floats 1e-4 + 1e-4·|b|, ints and masks exact.

use smgeo::model::swin::{relative_position_index, shift_mask};
use smgeo::model::{weights, ModelConfig, Trace};
use smgeo::weights_cli::build;
use tch::{Device, Kind, Tensor};

use crate::common::{assert_close, load};

fn swin_tiny_cfg() -> ModelConfig {
    let mut c = ModelConfig::paper();
    c.embed_dim = 16;
    c.window_size = 4;
    c.depths = vec![2, 2, 2, 2];
    c.num_heads = vec![2, 2, 4, 4];
    c.moe_block_indices = (0..4).map(|s| (s, vec![])).collect();
    c.fusion = None;
    c.sat_in_chans = 4; // the golden input has 4 channels; the import fills both embeds
    c.drop_path_rate = 0.0;
    c
}

/// NHWC golden → our flat (B, H·W, C)
fn flat(t: &Tensor) -> Tensor {
    let s = t.size();
    t.reshape([s[0], s[1] * s[2], s[3]])
}

fn run(prefix: &str, io_file: &str) {
    let io = load(io_file);
    let w = load("golden/swin_tiny_weights.safetensors");
    let head_w = w["head.fc.weight"].shallow_clone();
    let head_b = w["head.fc.bias"].shallow_clone();
    let mapped = weights::import_swin(w, 4, 4).unwrap();
    let (vs, m) = build(&swin_tiny_cfg(), Device::Cpu).unwrap();
    let rep = weights::load_tensors(&vs, &mapped, false, "swin golden").unwrap();
    // everything but the SMGeo head (and the unused satellite embed) came from the file
    assert!(rep.missing.iter().all(|k| k.starts_with("head.")), "{rep}");
    let mut trace = Trace::on();
    let x = &io[&format!("{prefix}.input")];
    let q = tch::no_grad(|| m.encode_query(x, false, &mut trace)).unwrap();
    let t = &trace.tensors;
    let mut pairs: Vec<(String, String)> = vec![
        ("inter.query_patch_embed".into(), format!("{prefix}.patch_embed_out")),
        ("inter.query_down0_out".into(), format!("{prefix}.stage1.downsample_out")),
    ];
    for i in 0..4 {
        pairs.push((format!("inter.query_stage{i}_out"), format!("{prefix}.stage{i}_out")));
    }
    for (ours, gold) in &pairs {
        assert_close(gold, &t[ours], &flat(&io[gold]), 1e-4, 1e-4);
    }
    assert_close("features", &q.tokens, &io[&format!("{prefix}.features")], 1e-4, 1e-4);
    let pre = q.tokens.mean_dim(&[1i64, 2][..], false, Kind::Float);
    assert_close("pre_logits", &pre, &io[&format!("{prefix}.pre_logits")], 1e-4, 1e-4);
    let logits = pre.linear(&head_w, Some(&head_b));
    assert_close("logits", &logits, &io[&format!("{prefix}.logits")], 1e-4, 1e-4);
    if prefix == "a" {
        let p0 = t["query_s0b0.attn_probs"].get(0);
        assert_close("probs win0", &p0, &io["a.stage0.block0.attn_probs_win0"], 1e-4, 1e-4);
        let p139 = t["query_s0b1.attn_probs"].get(139);
        assert_close("probs win139", &p139, &io["a.stage0.block1.attn_probs_win139"], 1e-4, 1e-4);
    }
}

#[test]
fn swin_run_a_matches_timm() {
    let _rng = crate::common::torch_rng();
    run("a", "golden/swin_tiny_io.safetensors");
}

#[test]
fn swin_run_b_padded_matches_timm() {
    let _rng = crate::common::torch_rng();
    run("b", "golden/swin_tiny_io_pad.safetensors");
}

#[test]
fn masks_and_index_match_timm_exactly() {
    let _rng = crate::common::torch_rng();
    let a = load("golden/swin_tiny_io.safetensors");
    let b = load("golden/swin_tiny_io_pad.safetensors");
    let idx = Tensor::from_slice(&relative_position_index(4, 4, 4)).view([16, 16]);
    assert!(idx.equal(&a["relative_position_index_w4"]));
    // (grid H, W) → padded grid and mask, window 4, shift 2
    for (io, key, h, w) in [
        (&a, "a.stage0.block1.attn_mask", 40, 56),
        (&a, "a.stage3.block1.attn_mask", 5, 7),
        (&b, "b.stage0.block1.attn_mask", 34, 42),
        (&b, "b.stage2.block1.attn_mask", 9, 11),
    ] {
        let g = smgeo::model::swin::WindowGeom::new(h, w, 4, true);
        let m = shift_mask(g.hp, g.wp, g.wh, g.ww, g.sh, g.sw);
        let want = &io[key];
        let got = Tensor::from_slice(&m).view(want.size().as_slice());
        assert!(got.equal(want), "{key}");
    }
}

#[test]
fn bias_table_resize_7_to_8_matches_timm() {
    let _rng = crate::common::torch_rng();
    let a = load("golden/swin_tiny_io.safetensors");
    let got = weights::resize_bias_table(&a["resize.table_w7"], 8).unwrap();
    assert_close("table_w8_timm", &got, &a["resize.table_w8_timm"], 1e-5, 1e-5);
}

#[test]
fn microsoft_layout_imports_like_timm() {
    let _rng = crate::common::torch_rng();
    // rewrite the timm golden weights in the Microsoft classification layout
    // (downsample at the end of the previous stage, `head.*`, persistent index/mask
    // buffers) and check both imports give the same tensors
    let timm = load("golden/swin_tiny_weights.safetensors");
    let mut ms = std::collections::BTreeMap::new();
    for (k, t) in &timm {
        let nk = if let Some(r) = k.strip_prefix("layers.") {
            let (n, rest) = r.split_once('.').unwrap();
            if rest.starts_with("downsample.") {
                format!("layers.{}.{rest}", n.parse::<i64>().unwrap() - 1)
            } else {
                k.clone()
            }
        } else if let Some(r) = k.strip_prefix("head.fc.") {
            format!("head.{r}")
        } else {
            k.clone()
        };
        ms.insert(nk, t.shallow_clone());
    }
    ms.insert(
        "layers.0.blocks.0.attn.relative_position_index".into(),
        Tensor::zeros([16, 16], (Kind::Int64, Device::Cpu)),
    );
    ms.insert("layers.0.blocks.1.attn_mask".into(), Tensor::zeros([140, 16, 16], (Kind::Float, Device::Cpu)));
    let a = weights::import_swin(timm, 4, 4).unwrap();
    let b = weights::import_swin(ms, 4, 4).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "{k}");
    }
    // ImageNet 3-channel input: the query embed gets a zero click channel
    assert_eq!(a["backbone.patch_embeds.query.proj.weight"].size(), vec![16, 4, 4, 4]);
}
