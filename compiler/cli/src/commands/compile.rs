//! `veil compile`: a model to a two-party program, with the weights split by who may see them.

use crate::model::{load, ModelArgs};
use crate::report::{cost_report, reveals, Net};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use veil_compiler::backend::partition::Vis;
use veil_compiler::compile::{artifacts, compile, CompileOptions, Compiled};

/// Arguments of `veil compile`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .veil).
    pub file: PathBuf,
    /// The program to write (default: the model's name with .vbc, in the current directory).
    /// Next to it go NAME.client (give it to the client) and NAME.server.safetensors (keep it
    /// at the server: it holds the private weights).
    #[arg(short, long, value_name = "FILE.vbc")]
    pub output: Option<PathBuf>,
    /// Fixed-point fractional bits.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(8..=24))]
    pub frac_bits: u8,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Compiles `file` and writes the artifacts; returns what was compiled and where it went.
pub fn compile_file(
    file: &Path,
    margs: &ModelArgs,
    frac_bits: u8,
    out: &Path,
) -> Result<(Compiled, artifacts::Paths)> {
    let m = load(file, margs)?;
    let mut meta = vec![
        ("source".to_string(), std::fs::canonicalize(file)?.display().to_string()),
        ("compiler".to_string(), format!("veil {}", env!("CARGO_PKG_VERSION"))),
    ];
    for (i, &v) in m.graph.inputs.iter().enumerate() {
        meta.push((format!("input{i}"), format!("{}: {}", m.graph.values[v].name, m.graph.ty(v))));
    }
    if let Some(s) = margs.seq {
        meta.push(("seq".into(), s.to_string()));
    }
    // What `veil run` needs to rebuild the plaintext reference of a DSL model.
    if let Some(m) = &margs.model {
        meta.push(("dsl_model".into(), m.clone()));
    }
    if let Some(seed) = margs.random_weights {
        meta.push(("random_weights".into(), seed.to_string()));
    }
    if let Some(w) = &margs.weights {
        meta.push(("weights".into(), std::fs::canonicalize(w)?.display().to_string()));
    }
    let opts = CompileOptions { frac_bits, meta, ..CompileOptions::default() };
    let c =
        compile(m.graph, &|_| Vis::Server, &opts).with_context(|| file.display().to_string())?;
    let p = artifacts::write(&c, out)?;
    Ok((c, p))
}

/// Compiles and prints the summary.
pub fn run(a: Args) -> Result<()> {
    let out = a.output.clone().unwrap_or_else(|| {
        PathBuf::from(a.file.file_stem().unwrap_or_default()).with_extension("vbc")
    });
    let t0 = std::time::Instant::now();
    let (c, p) = compile_file(&a.file, &a.model, a.frac_bits, &out)?;
    eprintln!("compiled in {:.2} s", t0.elapsed().as_secs_f64());
    print!("{}", summary(&c));
    println!("wrote:");
    println!("  {}  (the program: client, server and dealer)", p.program.display());
    println!("  {}  (the client's part: public data only)", p.client.display());
    println!("  {}  (the server's weights: keep private)", p.server.display());
    Ok(())
}

/// The compile summary: partition, approximations, reveals, predicted cost.
pub fn summary(c: &Compiled) -> String {
    let p = &c.program;
    let mut s = String::new();
    let [public, client, server, shared] = c.visibility;
    s.push_str(&format!(
        "model `{}`: {} instructions ({} setup), {} buffers\n",
        p.meta("model").unwrap_or("?"),
        p.body.len(),
        p.setup.len(),
        p.buffers.len()
    ));
    s.push_str(&format!(
        "values: {public} public, {client} client-only (computed in the clear by the client), {server} server-only, {shared} secret-shared\n"
    ));
    s.push_str(&format!(
        "inputs: {} from the client ({}); weights: {} server-private tensors\n",
        p.inputs.len(),
        p.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
        p.weights.len()
    ));
    let mut approx: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in &c.approximations {
        *approx
            .entry((a.op.split('{').next().unwrap_or(&a.op).to_string(), a.with.clone()))
            .or_default() += 1;
    }
    s.push_str("approximations:\n");
    for ((op, with), n) in approx {
        s.push_str(&format!("  {n} × {op} → {with}\n"));
    }
    if !c.clamped.is_empty() {
        s.push_str(&format!(
            "additive masks: {} constant(s) ≤ −1e9 replaced by a finite −64 ({})\n",
            c.clamped.len(),
            c.clamped.join(", ")
        ));
    }
    s.push_str("reveals (nothing else is revealed to anyone):\n");
    s.push_str(&reveals(p));
    s.push_str("predicted cost (exact: the VM measures the same bytes and rounds):\n");
    s.push_str(&cost_report(p, None, &[Net::Lan, Net::Wan]));
    s
}
