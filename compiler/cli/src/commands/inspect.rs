//! `veil inspect`: the IR dump of a model, or the disassembly of a program.

use crate::model::{load, ModelArgs};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `veil inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A model (.onnx, .veil) or a compiled program (.vbc).
    pub file: PathBuf,
    /// For a program: print only its header, I/O and instruction counts per tag, not the listing.
    #[arg(long)]
    pub summary: bool,
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
        if a.summary {
            return emit(&veil_isa::disas::summary(&p));
        }
        return emit(&veil_isa::disas::disassemble(&p));
    }
    let m = load(&a.file, &a.model)?;
    emit(&veil_compiler::ir::print::graph_text(&m.graph))
}

/// Writes a long dump to stdout; a reader that stops early (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
