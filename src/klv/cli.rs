//! `smgeo klv dump FILE.ts`: MISB ST 0601 telemetry of an MPEG-TS file as JSON lines.
//!
//! Writes one JSON object per KLV packet (format in [`super::json`]) to stdout or
//! `--output`, and a summary (streams, packet counts, checksum errors) to stderr.

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Write};
use std::path::PathBuf;

use anyhow::Context;

use super::json::{dump_ts_with, DumpOptions};
use super::ts::StreamKind;
use super::KlvError;

/// Arguments of `smgeo klv dump`.
#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    /// MPEG-TS file holding KLV metadata (asynchronous 0x06 "KLVA" or synchronous 0x15).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub file: PathBuf,
    /// Write the JSON lines here instead of stdout.
    #[arg(long, short, value_hint = clap::ValueHint::FilePath)]
    pub output: Option<PathBuf>,
    /// Only dump the KLV stream on this PID.
    #[arg(long)]
    pub pid: Option<u16>,
    /// Do not print the summary to stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `smgeo klv dump`.
pub fn run_dump(args: &DumpArgs) -> anyhow::Result<()> {
    let opts = DumpOptions { pid: args.pid };
    let stats = match &args.output {
        Some(path) => {
            let file = File::create(path).with_context(|| format!("creating output file {}", path.display()))?;
            let mut out = BufWriter::new(file);
            dump_ts_with(&args.file, &mut out, opts)?
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            match dump_ts_with(&args.file, &mut out, opts) {
                // The reader went away (`| head`): stop quietly, as Unix tools do.
                Err(KlvError::Output(e)) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
        }
    };
    if args.quiet {
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    for s in &stats.streams {
        let kind = match s.kind {
            StreamKind::Video => "video",
            StreamKind::KlvAsync => "KLV (asynchronous)",
            StreamKind::KlvSync => "KLV (synchronous)",
            StreamKind::Other => "other",
        };
        writeln!(err, "pid {} stream_type {:#04x}: {kind}", s.pid, s.stream_type)?;
    }
    writeln!(
        err,
        "{} KLV packets: {} decoded, {} checksum errors, {} other errors; {} TS packets, {} bytes skipped",
        stats.klv_units,
        stats.decoded,
        stats.checksum_errors,
        stats.other_errors,
        stats.demux.packets,
        stats.demux.resync_bytes
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dump: DumpArgs,
    }

    #[test]
    fn dump_to_file_via_clap() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/klv/");
        let out = std::env::temp_dir().join(format!("smgeo-klv-dump-{}.jsonl", std::process::id()));
        let cli = Cli::try_parse_from([
            "dump",
            &format!("{dir}h264_klv.ts"),
            "--output",
            out.to_str().unwrap(),
            "--pid",
            "257",
            "--quiet",
        ])
        .unwrap();
        run_dump(&cli.dump).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(text.lines().count(), 30);
        // Another PID: nothing.
        let cli = Cli::try_parse_from([
            "dump",
            &format!("{dir}h264_klv.ts"),
            "-o",
            out.to_str().unwrap(),
            "--pid",
            "256",
            "-q",
        ])
        .unwrap();
        run_dump(&cli.dump).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
        std::fs::remove_file(&out).unwrap();
        let missing = Cli::try_parse_from(["dump", "/nonexistent.ts", "-q"]).unwrap();
        let err = run_dump(&missing.dump).unwrap_err().to_string();
        assert!(err.contains("/nonexistent.ts"), "{err}");
    }
}
