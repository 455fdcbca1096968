//! Makes the labelled fixture for `veil eval/run --dataset`: the weights of
//! `tests/fixtures/models/tiny-classifier/model.veil` and a 12-sample test set with its labels.
//!
//! The task is synthetic but real: 4 classes, each a prototype token vector; a sample is 8
//! tokens, each either its class's prototype plus noise or a distractor drawn from N(0, 1). The
//! encoder layer keeps its seeded random weights; only the head is trained (softmax regression
//! on the pooled features of 512 training samples), so the labels are the generating classes,
//! not any model's predictions.
//!
//!     cargo run --release -p veil-compiler --example tiny_classifier -- \
//!       tests/fixtures/models/tiny-classifier tests/fixtures/datasets/tiny-classifier

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use veil_compiler::ir::Tensor;
use veil_compiler::recipe::{ModelSpec, WeightsSpec};
use veil_compiler::weights::{write_safetensors, SplitMix};

const S: usize = 8;
const D: usize = 16;
const FF: usize = 32;
const C: usize = 4;
const TRAIN: usize = 512;
const TEST: usize = 12;
/// Chance that a token carries its class's prototype (the rest are distractors).
const SIGNAL: f64 = 0.4;
/// Noise added to a prototype token.
const NOISE: f64 = 0.8;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [model_dir, data_dir] = args.as_slice() else {
        eprintln!("usage: tiny_classifier MODEL_DIR DATASET_DIR");
        std::process::exit(2);
    };
    if let Err(e) = run(model_dir, data_dir) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn normal(r: &mut SplitMix, n: usize, scale: f64, offset: f64) -> Vec<f32> {
    (0..n).map(|_| (offset + scale * r.normal()) as f32).collect()
}

fn body_weights(r: &mut SplitMix) -> Vec<(String, Tensor)> {
    let mut w = Vec::new();
    let mut linear = |r: &mut SplitMix, name: &str, n_in: usize, n_out: usize| {
        let s = 1.0 / (n_in as f64).sqrt();
        w.push((
            format!("{name}.weight"),
            Tensor::f32([n_in, n_out], normal(r, n_in * n_out, s, 0.0)),
        ));
        w.push((format!("{name}.bias"), Tensor::f32([n_out], normal(r, n_out, 0.05, 0.0))));
    };
    for name in ["attn.query", "attn.key", "attn.value", "attn.out"] {
        linear(r, name, D, D);
    }
    linear(r, "ffn.in", D, FF);
    linear(r, "ffn.out", FF, D);
    for name in ["attn.ln", "ffn.ln"] {
        w.push((format!("{name}.weight"), Tensor::f32([D], normal(r, D, 0.1, 1.0))));
        w.push((format!("{name}.bias"), Tensor::f32([D], normal(r, D, 0.05, 0.0))));
    }
    w
}

fn sample(r: &mut SplitMix, protos: &[Vec<f64>], class: usize) -> Tensor {
    let mut x = Vec::with_capacity(S * D);
    for _ in 0..S {
        let signal = (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= SIGNAL;
        for &p in &protos[class] {
            let v = if signal { p + NOISE * r.normal() } else { r.normal() };
            x.push(v as f32);
        }
    }
    Tensor::f32([S, D], x)
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn logits(w: &[f64], b: &[f64], f: &[f64]) -> Vec<f64> {
    (0..C).map(|c| b[c] + (0..D).map(|j| f[j] * w[j * C + c]).sum::<f64>()).collect()
}

fn argmax(z: &[f64]) -> usize {
    (0..z.len()).fold(0, |m, i| if z[i] > z[m] { i } else { m })
}

fn run(model_dir: &Path, data_dir: &Path) -> Result<(), String> {
    let mut r = SplitMix(27);
    let body = body_weights(&mut r);
    let protos: Vec<Vec<f64>> = (0..C).map(|_| (0..D).map(|_| r.normal()).collect()).collect();
    std::fs::create_dir_all(model_dir).map_err(|e| e.to_string())?;
    let weights = model_dir.join("weights.safetensors");
    write_safetensors(&weights, &body).map_err(|e| e.to_string())?;
    let features = veil_compiler::recipe::load(
        &ModelSpec {
            file: model_dir.join("model.veil"),
            dsl_model: Some("tiny_classifier_features".into()),
            weights: WeightsSpec::File(weights.clone()),
            ..Default::default()
        },
        None,
    )
    .map_err(|e| e.to_string())?
    .graph;
    let pooled = |x: &Tensor| -> Result<Vec<f64>, String> {
        let inputs = HashMap::from([("x".to_string(), x.clone())]);
        let out = veil_compiler::eval::run(&features, &inputs).map_err(|e| e.to_string())?;
        Ok(out[0].to_f64_vec())
    };
    let mut train = Vec::new();
    for i in 0..TRAIN {
        let c = i % C;
        train.push((pooled(&sample(&mut r, &protos, c))?, c));
    }
    // Full-batch gradient descent on the cross-entropy of a linear head.
    let (mut w, mut b) = (vec![0f64; D * C], vec![0f64; C]);
    for _ in 0..2000 {
        let (mut gw, mut gb) = (vec![0f64; D * C], vec![0f64; C]);
        for (f, y) in &train {
            let p = softmax(&logits(&w, &b, f));
            for c in 0..C {
                let d = p[c] - (c == *y) as u8 as f64;
                gb[c] += d;
                for j in 0..D {
                    gw[j * C + c] += d * f[j];
                }
            }
        }
        let n = TRAIN as f64;
        for (wi, g) in w.iter_mut().zip(&gw) {
            *wi -= 0.5 * (g / n + 1e-3 * *wi);
        }
        for (bi, g) in b.iter_mut().zip(&gb) {
            *bi -= 0.5 * g / n;
        }
    }
    let right = train.iter().filter(|(f, y)| argmax(&logits(&w, &b, f)) == *y).count();
    println!("training accuracy: {right}/{TRAIN}");
    let mut all = body;
    all.push(("head.weight".into(), Tensor::f32([D, C], w.iter().map(|&v| v as f32).collect())));
    all.push(("head.bias".into(), Tensor::f32([C], b.iter().map(|&v| v as f32).collect())));
    write_safetensors(&weights, &all).map_err(|e| e.to_string())?;
    println!("wrote {}", weights.display());

    let mut labels = String::from("# sample class (the class each sample was drawn from)\n");
    let mut test_right = 0;
    for i in 0..TEST {
        // Classes in a fixed shuffled order, three samples each.
        let c = [2, 0, 3, 1, 1, 3, 0, 2, 0, 2, 1, 3][i];
        let x = sample(&mut r, &protos, c);
        let name = format!("s{i:02}");
        let dir = data_dir.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        veil_compiler::npy::write(&dir.join("x.npy"), &x).map_err(|e| e.to_string())?;
        labels.push_str(&format!("{name} {c}\n"));
        test_right += (argmax(&logits(&w, &b, &pooled(&x)?)) == c) as usize;
    }
    std::fs::write(data_dir.join("labels.txt"), labels).map_err(|e| e.to_string())?;
    println!("wrote {TEST} samples to {}; test accuracy {test_right}/{TEST}", data_dir.display());
    Ok(())
}
