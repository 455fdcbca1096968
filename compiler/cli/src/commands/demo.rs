//! `veil demo`: compiles the bundled BERT-tiny export and runs it two-party — dealer, server
//! and client as separate processes over loopback TCP — then checks the output against the
//! stored onnxruntime output and prints the cost report.

use crate::model::ModelArgs;
use crate::outcome::{max_err, print_cost};
use crate::party::{client_part, model_inputs, program};
use crate::report::Net;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Arguments of `veil demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Run the roles as threads instead of processes.
    #[arg(long)]
    pub in_process: bool,
    /// Keep the compiled files in this directory (default: a temporary one, removed after).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/bert-tiny-random")
}

/// Runs the demo.
pub fn run(a: Args) -> Result<()> {
    let dir = fixtures();
    let model = dir.join("model.dynamo_opset17.onnx");
    if !model.exists() {
        bail!(
            "the bundled example is not at {} (run the demo from a clone of the veil repository)",
            model.display()
        );
    }
    let work = a
        .keep
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("veil-demo-{}", std::process::id())));
    let r = demo(&model, &dir, &work, a.in_process);
    if a.keep.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    r
}

fn demo(
    model: &std::path::Path,
    dir: &std::path::Path,
    work: &std::path::Path,
    in_process: bool,
) -> Result<()> {
    println!("veil demo: BERT-tiny (2 layers, hidden 128, 2 heads, 128 tokens, random weights)");
    println!("the client holds the token ids; the server holds every weight; the dealer hands out correlated randomness\n");
    println!("== 1. veil compile {}", model.display());
    let out = work.join("bert-tiny.vbc");
    let t0 = std::time::Instant::now();
    let margs = ModelArgs { seq: Some(128), ..ModelArgs::default() };
    let (c, paths) = super::compile::compile_file(model, &margs, &Default::default(), 16, &out)?;
    println!("compiled in {:.2} s", t0.elapsed().as_secs_f64());
    print!("{}", super::compile::summary(&c));

    let how = if in_process { "threads" } else { "separate processes over loopback TCP" };
    println!("\n== 2. veil run: dealer, server and client as {how}");
    let p = program(&paths.program)?;
    let cp = client_part(&paths.program, None, &p)?;
    let set = dir.join("test_data_set_0");
    let given: Vec<(String, PathBuf)> = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), set.join(format!("input_{i}.npy"))))
        .collect();
    let inputs = model_inputs(&cp, &given)?;
    let local = super::run::Local {
        path: &paths.program,
        program: &p,
        client: &cp,
        inputs: &inputs,
        timeout: 120,
        jit: true,
        insecure: false,
    };
    let (outs, m) = local.run(in_process)?;

    println!("\n== 3. output check");
    let want = veil_compiler::npy::read(&set.join("output_0.npy")).context("the stored output")?;
    let (name, got) = &outs[0];
    let (e, mx) = max_err(got, &want);
    println!(
        "`{name}` {}: max abs error vs onnxruntime {e:.3e} = {:.2e} × max|y| ({mx:.3}); tolerance 1e-2 × max|y|",
        got.ty(),
        e / mx
    );
    println!("\n== 4. cost");
    print_cost(&p, &m, &[Net::Lan, Net::Wan]);
    if e > 1e-2 * mx {
        bail!("the two-party output is off by {e:.3e}, above the 1e-2 × max|y| tolerance");
    }
    println!("\nok: the client got the model's output; the server's weights and the client's tokens stayed secret");
    Ok(())
}
