//! `veil`: compile transformer models to two-party programs and run them.

mod commands;
mod model;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Private transformer inference: a client's text, a server's fine-tuned weights, and neither
/// side learns the other's secrets.
#[derive(Parser)]
#[command(name = "veil", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model (.onnx, .veil) as veil's IR, or disassemble a compiled program (.vbc).
    Inspect(commands::inspect::Args),
    /// Run a model in plaintext with the reference evaluator (.npy inputs and outputs).
    Eval(commands::eval::Args),
    /// Write an ONNX model's parameters to a safetensors file (for DSL models).
    ExportWeights(commands::export::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::ExportWeights(a) => commands::export::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
