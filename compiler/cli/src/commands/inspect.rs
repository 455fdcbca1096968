//! `veil inspect`: the IR dump of a model, or the disassembly of a program.

use crate::model::{load, ModelArgs};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `veil inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A model (.onnx, .veil) or a compiled program (.vbc).
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Prints the dump.
pub fn run(a: Args) -> Result<()> {
    if a.file.extension().and_then(|e| e.to_str()) == Some("vbc") {
        let bytes =
            std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
        let p =
            veil_isa::Program::from_bytes(&bytes).with_context(|| a.file.display().to_string())?;
        veil_isa::validate(&p).with_context(|| a.file.display().to_string())?;
        print!("{}", veil_isa::disas::disassemble(&p));
        return Ok(());
    }
    let m = load(&a.file, &a.model)?;
    print!("{}", veil_compiler::ir::print::graph_text(&m.graph));
    Ok(())
}
