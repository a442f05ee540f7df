//! Release preset vs the official code's golden tensors (tests/fixtures/golden/tiny_*,
//! copied from the project's shared reference; see its README). Tolerances: SMGEO_SPEC
//! §11.6 — floats 1e-4 + 1e-4·|b|, ints exact, boxes 5e-3 px, losses relative 1e-4.

use smgeo::model::{weights, ModelConfig};
use smgeo::weights_cli::{build, named_outputs};
use tch::Device;

use crate::common::{assert_close, fixture, load};

fn tiny_model(train: bool) -> (tch::nn::VarStore, smgeo::model::Smgeo) {
    let mut cfg = ModelConfig::from_file(&fixture("golden/tiny_config.json")).unwrap();
    if train {
        cfg.gate_noise_std = 0.0;
    }
    let (vs, m) = build(&cfg, Device::Cpu).unwrap();
    let rep = weights::load_file(&vs, &fixture("golden/tiny_weights.safetensors"), true).unwrap();
    assert!(rep.is_clean());
    // stage 1: 2 MoE blocks, stage 2: 2, stage 3: 1 → (2+2+1) × 6 experts × 4 tensors aliases
    assert_eq!(rep.aliases_checked, 5 * 6 * 4);
    (vs, m)
}

fn compare(train: bool) -> usize {
    let io = load("golden/tiny_io.safetensors");
    let (_vs, m) = tiny_model(train);
    let ours = named_outputs(&m, &io["input.query"], &io["input.sat"], train, Some(&io["target.box_xyxy"])).unwrap();
    let lp = if train { "loss_train" } else { "loss_eval" };
    let mut n = 0;
    for (name, want) in &io {
        let key = match name.as_str() {
            k if k.starts_with("input.") || k.starts_with("metric") || k.starts_with("aux_fusion") => continue,
            k if k.starts_with("decode.box_xyxy_vis") || k == "target.box_xyxy" => continue,
            k if train && (k.starts_with("out.") || k.starts_with("loss_eval") || k.starts_with("decode.")) => continue,
            k if !train && (k.starts_with("train.") || k.starts_with("loss_train")) => continue,
            k if train && (k.starts_with("inter.") || k.starts_with("moe.")) => continue,
            k if k == format!("{lp}.total_1gpu") => format!("{lp}.total"),
            k if k.ends_with("total_multigpu") || k == format!("{lp}.entropy") => continue,
            k => k.to_string(),
        };
        let got = ours.get(&key).unwrap_or_else(|| panic!("we produce no {key}"));
        let (atol, rtol) = match key.as_str() {
            k if k.starts_with("decode.box") => (5e-3, 0.0),
            k if k.starts_with(lp) => (0.0, 1e-4),
            _ => (1e-4, 1e-4),
        };
        assert_close(&key, got, want, atol, rtol);
        n += 1;
    }
    n
}

#[test]
fn release_eval_forward_matches_official_code() {
    let _rng = crate::common::torch_rng();
    let n = compare(false);
    // every inter/moe/out/decode/target/loss tensor of the golden file was compared
    assert_eq!(n, 60, "every comparable golden tensor (91 minus inputs, metric, aux_fusion, vis variant, train-mode and multi-GPU totals)");
}

#[test]
fn release_train_forward_matches_official_code() {
    let _rng = crate::common::torch_rng();
    let n = compare(true);
    assert!(n >= 10, "only {n} tensors compared");
}

#[test]
fn query_is_ignored_by_release_but_not_by_paper() {
    let _rng = crate::common::torch_rng();
    let io = load("golden/tiny_io.safetensors");
    let (_vs, m) = tiny_model(false);
    let q2 = io["input.query"].randn_like();
    let run = |q: &tch::Tensor| {
        tch::no_grad(|| m.forward_t(q, &io["input.sat"], false, &mut smgeo::model::Trace::off())).unwrap()
    };
    assert!(run(&io["input.query"]).heatmap.equal(&run(&q2).heatmap));
    let mut cfg = ModelConfig::paper();
    cfg.embed_dim = 8;
    cfg.num_heads = vec![2, 2, 4, 4];
    cfg.window_size = 4;
    cfg.head_feat_channels = 16;
    let (_vs, p) = build(&cfg, Device::Cpu).unwrap();
    let runp = |q: &tch::Tensor| {
        tch::no_grad(|| p.forward_t(q, &io["input.sat"], false, &mut smgeo::model::Trace::off())).unwrap()
    };
    let d = (runp(&io["input.query"]).heatmap - runp(&q2).heatmap).abs().max().double_value(&[]);
    assert!(d > 1e-4, "paper preset output does not depend on the query ({d})");
}

#[test]
fn wrong_weights_are_clear_errors() {
    let _rng = crate::common::torch_rng();
    let cfg = ModelConfig::from_file(&fixture("golden/tiny_config.json")).unwrap();
    // paper-preset model with the release file: bias tables missing etc.
    let mut paper = cfg.clone();
    paper.preset = smgeo::model::Preset::Paper;
    paper.rel_pos_bias = true;
    let (vs, _) = build(&paper, Device::Cpu).unwrap();
    let e = weights::load_file(&vs, &fixture("golden/tiny_weights.safetensors"), true).unwrap_err().to_string();
    assert!(e.contains("missing from the file") && e.contains("relative_position_bias_table"), "{e}");
    // truncated file
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("golden/tiny_weights.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (vs, _) = build(&cfg, Device::Cpu).unwrap();
    let e = weights::load_file(&vs, &cut, true).unwrap_err().to_string();
    assert!(e.contains("not a valid safetensors"), "{e}");
    // garbage
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert!(weights::load_file(&vs, &junk, true).is_err());
    // the default release preset (other sizes) with the tiny file: shape mismatches
    let (vs, _) = build(&ModelConfig::release(), Device::Cpu).unwrap();
    let e = weights::load_file(&vs, &fixture("golden/tiny_weights.safetensors"), true).unwrap_err().to_string();
    assert!(e.contains("wrong shape"), "{e}");
}

#[test]
fn parameter_counts_match_the_references() {
    let _rng = crate::common::torch_rng();
    let (vs, _) = build(&ModelConfig::release(), Device::Cpu).unwrap();
    assert_eq!(smgeo::model::count_params(&vs), 53_499_439);
    let (vs, _) = build(&ModelConfig::paper(), Device::Cpu).unwrap();
    let n = smgeo::model::count_params(&vs) as f64;
    assert!((n / 33.57e6 - 1.0).abs() < 0.02, "paper preset has {n} parameters");
}
