//! `veil connect`: the client role. Computes its plaintext part on its inputs, runs the
//! program with the server (material from the dealer), and receives the outputs.

use crate::model::parse_assignment;
use crate::outcome::{print_cost, print_outputs, Measured};
use crate::party::{assemble, client_part, model_inputs, preprocess, program, progress};
use crate::report::Net;
use anyhow::Result;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use veil_vm::session::{run_client, NetOptions};

/// Arguments of `veil connect`.
#[derive(clap::Args)]
pub struct Args {
    /// The compiled program (.vbc).
    pub program: PathBuf,
    /// The client's part (default: NAME.client next to the program).
    #[arg(long, value_name = "FILE")]
    pub client_part: Option<PathBuf>,
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub server: String,
    /// The dealer's address.
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub dealer: String,
    /// A model input as NAME=FILE.npy; repeatable.
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_assignment)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Write each output to DIR/<output name>.npy.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Seconds to wait for any peer message.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Network for the time estimate (default: both).
    #[arg(long, value_enum)]
    pub net: Option<Net>,
    /// Interpret local kernels instead of compiling them with the JIT (same results).
    #[arg(long)]
    pub no_jit: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Runs the client's side of one session over TCP; returns outputs and measurements.
pub fn client_over_tcp(
    p: &veil_isa::Program,
    c: &veil_compiler::compile::ClientPart,
    inputs: &std::collections::HashMap<String, veil_compiler::ir::Tensor>,
    server: &str,
    dealer: &str,
    opts: &NetOptions,
) -> Result<(Vec<(String, veil_compiler::ir::Tensor)>, Measured)> {
    let t = Instant::now();
    let (feeds, own) = preprocess(c, inputs)?;
    let prefix = t.elapsed();
    let (bar, cb) = progress(p);
    let t0 = Instant::now();
    let r = run_client(p, &feeds, server, dealer, opts, Some(Box::new(cb)));
    bar.finish_and_clear();
    let (revealed, rep) = r?;
    let online = t0.elapsed();
    let outs = assemble(c, &revealed, &own)?;
    let m = Measured {
        dealer_bytes: rep.report.dealer_bytes,
        client: rep.report,
        server: None,
        offline: Duration::ZERO,
        online,
        prefix,
        client_rss: crate::party::peak_rss(),
    };
    Ok((outs, m))
}

/// Connects and reports.
pub fn run(a: Args) -> Result<()> {
    let p = program(&a.program)?;
    let c = client_part(&a.program, a.client_part.as_deref(), &p)?;
    let inputs = model_inputs(&c, &a.inputs)?;
    let tls = a.tls.config("client")?;
    let (outs, m) = client_over_tcp(
        &p,
        &c,
        &inputs,
        &a.server,
        &a.dealer,
        &NetOptions {
            timeout: Duration::from_secs(a.timeout),
            jit: !a.no_jit,
            tls,
            ..NetOptions::default()
        },
    )?;
    print_outputs(&outs, None, a.output.as_deref())?;
    let nets = Net::chosen(a.net);
    print_cost(&p, &m, &nets);
    Ok(())
}
