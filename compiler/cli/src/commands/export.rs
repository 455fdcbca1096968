//! `veil export-weights`: an ONNX model's parameters as a safetensors file.

use crate::model::ModelArgs;
use anyhow::Result;
use std::path::PathBuf;

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

/// Exports every weight of the imported graph by its ONNX initializer name, except that an
/// exporter-generated name (`val_49`) of a linear layer's matrix becomes `<module>.weight`
/// after its bias (see `frontend::weight_names`).
pub fn run(a: Args) -> Result<()> {
    let opts = veil_compiler::frontend::onnx::ImportOptions {
        seq: a.model.seq,
        batch: a.model.batch,
        dims: a.model.dims.clone(),
        ..Default::default()
    };
    let g = veil_compiler::frontend::onnx::import_file(&a.file, &opts)?;
    let renamed = veil_compiler::frontend::weight_names::descriptive_names(&g).len();
    let tensors = veil_compiler::frontend::weight_names::exported_weights(&g);
    veil_compiler::weights::write_safetensors(&a.output, &tensors)?;
    let n: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
    println!("wrote {} tensors ({n} parameters) to {}", tensors.len(), a.output.display());
    if renamed > 0 {
        println!(
            "named {renamed} exporter-generated matrices after their biases (`<module>.weight`, [in, out])"
        );
    }
    Ok(())
}
