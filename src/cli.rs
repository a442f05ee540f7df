//! Command line (clap derive). `main` only parses and dispatches here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{bench, predict, weights_cli};

/// smgeo: find the object clicked in drone video in satellite imagery and publish its
/// WGS84 position (SMGeo model in libtorch).
#[derive(Parser, Debug)]
#[command(name = "smgeo", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `smgeo=debug`.
    #[arg(long, global = true, env = "SMGEO_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// One localisation: query image + click against a reference image; prints JSON.
    Predict(predict::PredictArgs),
    /// Weight files: inspect, import official/ImageNet checkpoints, init, forward.
    #[command(subcommand)]
    Weights(weights_cli::WeightsCmd),
    /// Train SMGeo on CVOGL (or synthetic CVOGL) data.
    Train(crate::offline::cli::TrainCmd),
    /// Evaluate weights on a CVOGL split: metrics JSON and a Markdown report with plots.
    Eval(crate::offline::cli::EvalCmd),
    /// Satellite mosaics: build (COG tiles + VRT), info, georeferenced chips.
    #[cfg(feature = "geo")]
    #[command(subcommand)]
    Mosaic(crate::georef::cli::MosaicCmd),
    /// The zero-setup main job: synthetic scene + flight, a small model trained on the
    /// scene, in-process MQTT broker, the live pipeline on a UDP stream, results vs truth.
    #[cfg(all(feature = "geo", feature = "gst"))]
    Demo(crate::live::demo::DemoArgs),
    /// The live pipeline: streams, prompts over MQTT, WGS84 targets out.
    #[cfg(all(feature = "geo", feature = "gst"))]
    Run(crate::live::run::RunArgs),
    /// A recorded flight through the live code path; geo-error report with --truth.
    #[cfg(all(feature = "geo", feature = "gst"))]
    Replay(crate::live::replay::ReplayArgs),
    /// Synthetic data in the real formats (one procedural world for all generators).
    #[command(subcommand)]
    Synth(SynthCmd),
    /// MISB ST 0601 KLV telemetry.
    #[command(subcommand)]
    Klv(KlvCmd),
    /// Benchmarks (JSON on stdout).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Which device and libtorch this binary uses.
    Info {
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SynthCmd {
    /// A synthetic benchmark in CVOGL's exact format (JPEGs + .pth records).
    Cvogl(crate::synth::cli::CvoglArgs),
    /// A georeferenced satellite mosaic (COG) of a synthetic world, plus scene.json.
    #[cfg(feature = "geo")]
    Scene(crate::synth::cli::SceneArgs),
    /// A drone flight over a scene: H.264 + MISB ST 0601 KLV in MPEG-TS, prompts, truth.
    #[cfg(all(feature = "geo", feature = "gst"))]
    Flight(crate::synth::cli::FlightArgs),
    /// Send a written flight over UDP (MPEG-TS, re-rendered frames, same KLV).
    #[cfg(all(feature = "geo", feature = "gst"))]
    Stream(crate::synth::cli::StreamArgs),
}

#[derive(Subcommand, Debug)]
pub enum KlvCmd {
    /// Decode every KLV packet of an MPEG-TS file and print JSON lines.
    Dump(crate::klv::cli::DumpArgs),
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Model forward latency at CVOGL sizes, both presets.
    Model(bench::BenchModelArgs),
    /// Training step throughput (samples/s) and peak memory of a training configuration.
    Train(bench::BenchTrainArgs),
    /// Reduced precision (bf16/f16) against float32 on a dataset split: same argmax cell,
    /// logit and box differences, routing agreement, accuracy and time of each.
    Precision(bench::BenchPrecisionArgs),
    /// Decode throughput of 1080p30 H.264 into RGB frames, appsink-to-consumer latency.
    #[cfg(feature = "gst")]
    Ingest {
        #[arg(long, default_value_t = 4)]
        seconds: u32,
    },
    /// The live path on a synthetic flight (replay): prompt-to-result latency with and
    /// without cached chip features, time outside the model.
    #[cfg(all(feature = "geo", feature = "gst"))]
    Live {
        /// Flight folder (`smgeo synth flight`): flight.ts, prompts.jsonl, truth.jsonl.
        #[arg(long, default_value = ".cache/demo/flight")]
        flight: std::path::PathBuf,
        #[arg(long, default_value = "config/live.toml")]
        config: std::path::PathBuf,
        /// Turn every prompt into a track (re-localisation on cached chip features).
        #[arg(long)]
        track: bool,
    },
    /// Time to cut a 1024² chip from a multi-file COG mosaic vs GDAL's command-line tools.
    #[cfg(feature = "geo")]
    Chip {
        /// Mosaic (file, folder or VRT); default: a generated 2×2 COG mosaic.
        #[arg(long)]
        mosaic: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 20)]
        iterations: usize,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.cmd {
        Cmd::Predict(a) => {
            let p = predict::run(a)?;
            println!("{}", serde_json::to_string(&p)?);
        }
        Cmd::Weights(w) => weights_cli::run(w)?,
        #[cfg(feature = "geo")]
        Cmd::Mosaic(m) => crate::georef::cli::run(m)?,
        #[cfg(all(feature = "geo", feature = "gst"))]
        Cmd::Demo(a) => {
            crate::live::demo::run(a)?;
        }
        #[cfg(all(feature = "geo", feature = "gst"))]
        Cmd::Run(a) => {
            let r = crate::live::run::run(a)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        #[cfg(all(feature = "geo", feature = "gst"))]
        Cmd::Replay(a) => {
            let s = crate::live::replay::run(a)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Cmd::Synth(SynthCmd::Cvogl(a)) => {
            let m = crate::synth::cli::run_cvogl(a)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        #[cfg(feature = "geo")]
        Cmd::Synth(SynthCmd::Scene(a)) => {
            println!("{}", serde_json::to_string_pretty(&crate::synth::cli::run_scene(a)?)?);
        }
        #[cfg(all(feature = "geo", feature = "gst"))]
        Cmd::Synth(SynthCmd::Flight(a)) => {
            println!("{}", serde_json::to_string_pretty(&crate::synth::cli::run_flight(a)?)?);
        }
        #[cfg(all(feature = "geo", feature = "gst"))]
        Cmd::Synth(SynthCmd::Stream(a)) => {
            println!("{}", serde_json::to_string_pretty(&crate::synth::cli::run_stream(a)?)?);
        }
        Cmd::Klv(KlvCmd::Dump(a)) => crate::klv::cli::run_dump(a)?,
        Cmd::Train(t) => crate::offline::cli::run_train(t)?,
        Cmd::Eval(e) => crate::offline::cli::run_eval(e)?,
        Cmd::Bench(BenchCmd::Model(a)) => {
            let v = bench::bench_model(a)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Bench(BenchCmd::Train(a)) => {
            let v = bench::bench_train(a)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Bench(BenchCmd::Precision(a)) => {
            let v = bench::bench_precision(a)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        #[cfg(feature = "gst")]
        Cmd::Bench(BenchCmd::Ingest { seconds }) => {
            let o = crate::ingest::IngestBenchOptions { seconds: *seconds, ..Default::default() };
            println!("{}", serde_json::to_string_pretty(&crate::ingest::bench_ingest(&o)?)?);
        }
        #[cfg(all(feature = "geo", feature = "gst"))]
        Cmd::Bench(BenchCmd::Live { flight, config, track }) => {
            let mut prompts = flight.join("prompts.jsonl");
            if *track {
                let mut ps = crate::live::replay::read_prompts(&prompts)?;
                let mut text = String::new();
                for p in &mut ps {
                    p.mode = crate::publish::PromptMode::Track;
                    text += &serde_json::to_string(p)?;
                    text.push('\n');
                }
                prompts = std::env::temp_dir().join(format!("smgeo-bench-live-{}.jsonl", std::process::id()));
                std::fs::write(&prompts, text)?;
            }
            let a = crate::live::replay::ReplayArgs {
                flight: flight.join("flight.ts"),
                prompts,
                truth: Some(flight.join("truth.jsonl")),
                config: config.clone(),
                out: None,
                stream: "bench".into(),
                fallback_centre: None,
            };
            let s = crate::live::replay::run(&a)?;
            let v = serde_json::json!({
                "flight": s.flight, "prompts": s.prompts, "results": s.targets, "errors": s.errors.len(),
                "wall_s": s.wall_s, "mean_step_ms": s.mean_step_ms, "cache": s.cache, "bench": s.bench,
                "geo_error": s.geo_error,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        #[cfg(feature = "geo")]
        Cmd::Bench(BenchCmd::Chip { mosaic, size, iterations }) => {
            let o = crate::georef::bench::BenchChipOptions {
                mosaic: mosaic.clone(),
                center: None,
                size: *size,
                iterations: *iterations,
            };
            println!("{}", serde_json::to_string_pretty(&crate::georef::bench::bench_chip(&o)?)?);
        }
        Cmd::Info { device } => {
            let d = crate::device::select(device)?;
            println!(
                "{}",
                serde_json::json!({
                    "device": crate::device::describe(d),
                    "cuda_backend_loaded": crate::device::load_cuda_backend(),
                    "cuda_available": tch::Cuda::is_available(),
                    "cuda_devices": tch::Cuda::device_count(),
                    "threads": tch::get_num_threads(),
                    "version": env!("CARGO_PKG_VERSION"),
                })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
