//! `veil eval`: the plaintext reference evaluator on .npy inputs.

use crate::dataset::{Dataset, DatasetArgs, Row, Source, Summary, Task};
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
    #[command(flatten)]
    pub dataset: DatasetArgs,
}

/// File name for an output (ONNX names may contain `/` or `:`).
pub fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
        .collect()
}

/// Evaluates and reports.
pub fn run(a: Args) -> Result<()> {
    if let Some(dir) = &a.dataset.dataset {
        return dataset(&a, dir);
    }
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

/// `--dataset`: every sample in plaintext, each sample's outputs to `--output DIR/<sample>/`,
/// and the plaintext accuracy where there are labels.
fn dataset(a: &Args, dir: &std::path::Path) -> Result<()> {
    let ds = Dataset::open(dir)?;
    let margs = crate::model::bind_from_inputs(&a.file, &a.model, &ds.first_given()?)?;
    let m = load(&a.file, &margs)?;
    let g = &m.graph;
    // Every sample and label is checked before anything runs or is written.
    let samples = ds.read(g)?;
    let names: Vec<String> = g.outputs.iter().map(|&v| g.values[v].name.clone()).collect();
    let k = crate::dataset::output_index(&names, a.dataset.task_output.as_deref())?;
    let shape = g.ty(g.outputs[k]).shape.clone();
    let (task, why) = Task::choose(a.dataset.task, ds.labels.is_some(), &shape);
    if task == Task::Classify {
        ds.check_classes(&names[k], shape.last().copied().unwrap_or(1))?;
    }
    let src = Source {
        command: "eval",
        file: &a.file,
        dataset: &ds,
        task: (task, why),
        output: &names[k],
    };
    src.print_header(Some(&shape));
    let bar = crate::dataset::progress(samples.len());
    let t0 = std::time::Instant::now();
    let mut rows = Vec::with_capacity(samples.len());
    for (i, ((name, _), inputs)) in ds.samples.iter().zip(&samples).enumerate() {
        let outs =
            veil_compiler::eval::run(g, inputs).with_context(|| format!("sample `{name}`"))?;
        if let Some(out) = &a.output {
            let named: Vec<(String, veil_compiler::ir::Tensor)> =
                names.iter().cloned().zip(outs.iter().cloned()).collect();
            crate::outcome::write_outputs(&named, &out.join(name))?;
        }
        rows.push(Row::new(task, name, ds.label(i), Some(&outs[k]), None));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let dt = t0.elapsed();
    let summary = Summary::of(&rows);
    summary.print(&rows);
    match (task, ds.labels.is_some()) {
        (Task::Classify, false) => {
            println!("(no labels: the plaintext predictions are in --report-json)")
        }
        (Task::Embed, _) => println!(
            "(embed: eval has no two-party output to compare with; `veil run --dataset` does)"
        ),
        _ => {}
    }
    if let Some(out) = &a.output {
        println!("wrote each sample's outputs to {}/<sample>/", out.display());
    }
    println!("evaluated {} sample(s) in {:.1} ms", rows.len(), dt.as_secs_f64() * 1e3);
    if let Some(path) = &a.dataset.report_json {
        let extra = serde_json::json!({ "eval_secs": dt.as_secs_f64() });
        src.write_json(path, &summary, &rows, extra)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
