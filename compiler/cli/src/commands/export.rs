//! `veil export-weights`: an ONNX model's parameters as a safetensors file.

use crate::model::ModelArgs;
use anyhow::Result;
use std::path::PathBuf;
use veil_compiler::ir::ValueDef;

/// Arguments of `veil export-weights`.
#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub file: PathBuf,
    /// The safetensors file to write.
    #[arg(short, long, value_name = "FILE.safetensors")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Exports every weight of the imported graph, by its ONNX initializer name.
pub fn run(a: Args) -> Result<()> {
    let opts = veil_compiler::frontend::onnx::ImportOptions {
        seq: a.model.seq,
        batch: a.model.batch,
        dims: a.model.dims.clone(),
        ..Default::default()
    };
    let g = veil_compiler::frontend::onnx::import_file(&a.file, &opts)?;
    let mut tensors = Vec::new();
    for (_, vd) in g.values.iter() {
        if let ValueDef::Weight(t) = &vd.def {
            tensors.push((vd.name.clone(), (**t).clone()));
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    veil_compiler::weights::write_safetensors(&a.output, &tensors)?;
    let n: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
    println!("wrote {} tensors ({n} parameters) to {}", tensors.len(), a.output.display());
    Ok(())
}
