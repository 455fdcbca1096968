//! Makes a merged LoRA checkpoint to try `veil compile --public-weights BASE --lora-rank R` on:
//! the base weights with a seeded rank-4 update merged into every matrix of layer 1 (as PEFT's
//! `merge_and_unload` writes a fine-tune) and one layer-1 bias changed (a bias-tuned parameter).
//!
//!     cargo run --release -p veil-compiler --example lora_checkpoint -- BASE.safetensors OUT.safetensors

use std::path::{Path, PathBuf};
use veil_compiler::ir::Tensor;
use veil_compiler::weights::{write_safetensors, SafetensorsSource, SplitMix};

const RANK: usize = 4;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [base, out] = args.as_slice() else {
        eprintln!("usage: lora_checkpoint BASE.safetensors OUT.safetensors");
        std::process::exit(2);
    };
    if let Err(e) = run(base, out) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(base: &Path, out: &Path) -> Result<(), String> {
    let src = SafetensorsSource::open(base).map_err(|e| e.to_string())?;
    let mut rng = SplitMix(42);
    let (mut merged, mut tuned) = (0, Vec::new());
    for name in src.names() {
        let mut t = src.tensor(&name).map_err(|e| e.to_string())?;
        if name.contains(".layer.1.") && t.shape.len() == 2 {
            let (k, m) = (t.shape[0], t.shape[1]);
            let a: Vec<f64> = (0..k * RANK).map(|_| rng.normal() * 0.05).collect();
            let b: Vec<f64> = (0..RANK * m).map(|_| rng.normal() * 0.05).collect();
            let w = t.as_f32().ok_or_else(|| format!("{name}: not f32"))?;
            let v = (0..k * m)
                .map(|ij| {
                    let (i, j) = (ij / m, ij % m);
                    w[ij] + (0..RANK).map(|c| a[i * RANK + c] * b[c * m + j]).sum::<f64>() as f32
                })
                .collect();
            t = Tensor::f32(t.shape.clone(), v);
            merged += 1;
        } else if name.ends_with("layer.1.output.dense.bias") {
            let v = t.as_f32().ok_or_else(|| format!("{name}: not f32"))?;
            t = Tensor::f32(t.shape.clone(), v.iter().map(|x| x + 0.1).collect());
        }
        tuned.push((name, t));
    }
    if merged == 0 {
        return Err(format!("{}: no matrix of a `.layer.1.` to update", base.display()));
    }
    write_safetensors(out, &tuned).map_err(|e| e.to_string())?;
    println!("wrote {} ({merged} matrices with a rank-{RANK} update merged)", out.display());
    Ok(())
}
