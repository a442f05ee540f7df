//! One integration-test binary (ripgrep style): each module is one area.
mod cli;
mod common;
mod golden_release;
mod golden_swin;
mod model_units;
mod precision;
mod run_signal;
mod train;
