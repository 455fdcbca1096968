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
    let mut margs = a.model.clone();
    let dsl = a.file.extension().and_then(|e| e.to_str()) == Some("veil");
    if dsl && margs.weights.is_none() && margs.random_weights.is_none() {
        // The dump shows shapes, not values: any parameters will do.
        eprintln!(
            "(no --weights: the parameters are drawn at random; the dump shows their shapes only)"
        );
        margs.random_weights = Some(0);
    }
    let m = match load(&a.file, &margs) {
        Ok(m) => m,
        Err(e) if unbound_dim(&e) => {
            // The IR has static shapes only; the declared interface is what there is to show.
            let iface = veil_compiler::frontend::onnx::interface::interface(&a.file)?;
            // Batch dimensions default to 1; one --seq binds every name with "seq" in it, so
            // when there are several (a decoder's past and new lengths, or an exporter's
            // expression `past_sequence_length + 1`), each gets its own --dim.
            let named = iface.symbols();
            let seqs = named.iter().filter(|s| s.to_lowercase().contains("seq")).count();
            let mut flags: Vec<String> = Vec::new();
            for s in &named {
                let l = s.to_lowercase();
                let flag = match () {
                    _ if l.contains("batch") => continue,
                    _ if l.contains("seq") && seqs == 1 => "--seq N".to_string(),
                    _ if s.contains(' ') => format!("--dim '{s}=N'"),
                    _ => format!("--dim {s}=N"),
                };
                flags.push(flag);
            }
            return emit(&format!(
                "{iface}symbolic dimensions unbound: {}\n(the IR dump needs them bound: {}; \
                 batch dimensions default to 1)\n",
                iface.symbols().join(", "),
                flags.join(" ")
            ));
        }
        Err(e) => return Err(e),
    };
    let mut text = veil_compiler::ir::print::graph_text(&m.graph);
    // Exporters' anonymous weights (`val_49`) are matched by `--public` globs under the name
    // `veil export-weights` gives them: show both.
    let alias = veil_compiler::frontend::weight_names::descriptive_names(&m.graph);
    let mut renamed: Vec<(String, String)> = alias
        .iter()
        .map(|(&v, n)| (m.graph.values[v].name.clone(), n.clone()))
        .filter(|(a, b)| a != b)
        .collect();
    if !renamed.is_empty() {
        renamed.sort();
        text.push_str("names --public globs match (exporter's name → name):\n");
        for (from, to) in renamed {
            text.push_str(&format!("  %{from} → {to}\n"));
        }
    }
    emit(&text)
}

/// True when `e` is an ONNX import stopped by a symbolic dimension no flag binds.
fn unbound_dim(e: &anyhow::Error) -> bool {
    use veil_compiler::frontend::onnx::ImportError;
    use veil_compiler::recipe::RecipeError;
    e.chain().any(|c| {
        matches!(c.downcast_ref::<ImportError>(), Some(ImportError::UnboundDim { .. }))
            || matches!(
                c.downcast_ref::<RecipeError>(),
                Some(RecipeError::Import(ImportError::UnboundDim { .. }))
            )
    })
}

/// Writes a long dump to stdout; a reader that stops early (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
