//! `dlm`: the command line ([`cli`] has one module per subcommand).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::{engines::EnginesArgs, generate::GenerateArgs, info::InfoArgs, profile::ProfileArgs, serve::ServeArgs};

/// Edge runtime for Diffusion-LM: controllable text generation by reverse diffusion on ONNX Runtime.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate sentences by reverse diffusion.
    Generate(GenerateArgs),
    /// Measure latency per request and per step over step budgets, batch sizes and precisions.
    Profile(ProfileArgs),
    /// Serve newline-delimited JSON requests (stdin/stdout, Unix socket, loopback TCP, serial line) and HTTP.
    Serve(ServeArgs),
    /// Print the manifest, the ONNX Runtime library and the providers each session runs on.
    Info(InfoArgs),
    /// Build the TensorRT engines of every graph of a precision into the engine cache, as
    /// `dlm serve` with the same settings would at start.
    BuildEngines(EnginesArgs),
}

/// A closed stdout (`dlm ... | head`) ends the program quietly, as for any Unix filter.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// An empty `DLM_*` or `ORT_DYLIB_PATH` (`DLM_MODEL=` in an environment file) means unset, as
/// systemd's `EnvironmentFile=` writes it, for clap and for ONNX Runtime's loader alike; but an
/// empty `DLM_API_KEY` stays, to be refused at start (a key that expanded to nothing must not
/// open the server).
fn unset_empty_variables() {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(name, value)| {
            let name = name.to_string_lossy();
            value.is_empty() && (name.starts_with("DLM_") || name == "ORT_DYLIB_PATH") && name != "DLM_API_KEY"
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        std::env::remove_var(name); // before any other thread runs
    }
}

fn main() -> ExitCode {
    unset_empty_variables();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Profile(args) => cli::profile::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::BuildEngines(args) => cli::engines::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
