//! `veil eval`: the plaintext reference evaluator on .npy inputs.

use crate::model::{load, parse_assignment, ModelArgs};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `veil eval`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .veil).
    pub file: PathBuf,
    /// An input as NAME=FILE.npy (C order; dtype and shape must match the model); repeatable.
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_assignment)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Write each output to DIR/<output name>.npy.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// File name for an output (ONNX names may contain `/` or `:`).
pub fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
        .collect()
}

/// Evaluates and reports.
pub fn run(a: Args) -> Result<()> {
    // Each input file is read once: its shape binds the model's symbolic dimensions, then it
    // is checked against the model loaded with them.
    let given = crate::model::read_given(&a.inputs);
    let margs = crate::model::bind_from_inputs(&a.file, &a.model, &given)?;
    let m = load(&a.file, &margs)?;
    let g = &m.graph;
    let inputs = crate::model::check_inputs(g, given)?;
    let t0 = std::time::Instant::now();
    let outs = veil_compiler::eval::run(g, &inputs)?;
    let dt = t0.elapsed();
    if let Some(dir) = &a.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (&v, t) in g.outputs.iter().zip(&outs) {
        let name = &g.values[v].name;
        let vals = t.to_f64_vec();
        let (mn, mx) =
            vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let mean = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
        println!("{name}: {} min {mn:.6} max {mx:.6} mean {mean:.6}", t.ty());
        if let Some(dir) = &a.output {
            let path = dir.join(format!("{}.npy", file_name(name)));
            veil_compiler::npy::write(&path, t)?;
            println!("  wrote {}", path.display());
        }
    }
    eprintln!("evaluated in {:.1} ms", dt.as_secs_f64() * 1e3);
    Ok(())
}
