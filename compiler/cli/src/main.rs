//! `veil`: compile transformer models to two-party programs and run them.

mod commands;
mod dataset;
mod model;
mod nonlinear;
mod outcome;
mod party;
mod prune;
mod report;
mod svg;
mod tls;

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
    /// Compile a model to bytecode and run it two-party on the bundled BERT-tiny: the whole job in one command.
    Demo(commands::demo::Args),
    /// Compile a model (.onnx, .veil) to a two-party program (.vbc) plus the client's and server's files.
    Compile(commands::compile::Args),
    /// Measure the value ranges of a model's nonlinear layers on sample inputs (for --nonlinear smu).
    Calibrate(commands::calibrate::Args),
    /// Private text generation from a decoder (GPT-2 family): compile, run two-party, tokens and cost per token.
    Generate(commands::generate::Args),
    /// Predicted bytes, rounds and network time of a compiled program, by layer and op kind.
    Cost(commands::cost::Args),
    /// Run a compiled program on this machine: dealer, server and client, then error and cost report.
    Run(commands::run::Args),
    /// Server role: hold the private weights and serve client sessions.
    Serve(commands::serve::Args),
    /// Dealer role: hand out correlated randomness to the parties of each session.
    Dealer(commands::dealer::Args),
    /// Client role: connect to a server and dealer, supply the inputs, receive the outputs.
    Connect(commands::connect::Args),
    /// Print a model (.onnx, .veil) as veil's IR, or disassemble a compiled program (.vbc).
    Inspect(commands::inspect::Args),
    /// Run a model in plaintext with the reference evaluator (.npy inputs and outputs).
    Eval(commands::eval::Args),
    /// Write an ONNX model's parameters to a safetensors file (for DSL models).
    ExportWeights(commands::export::Args),
    /// The benchmark suite: BERT-base and GPT-2 small with and without each optimization (JSON, Markdown, SVG).
    Bench(commands::bench::Args),
    /// Write TLS certificates for a deployment: a CA and one certificate per role.
    Keygen(commands::keygen::Args),
    /// Measure every stdlib approximation: error in the fixed-point simulator, cost in bytecode.
    Stdlib(commands::stdlib::Args),
}

fn main() -> ExitCode {
    // A reader that stops early (`veil ... | head`) closes stdout: end quietly, as Unix tools do.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Compile(a) => commands::compile::run(a),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Cost(a) => commands::cost::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Dealer(a) => commands::dealer::run(a),
        Command::Connect(a) => commands::connect::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::ExportWeights(a) => commands::export::run(a),
        Command::Stdlib(a) => commands::stdlib::run(a),
        Command::Keygen(a) => commands::keygen::run(a),
        Command::Bench(a) => commands::bench::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
