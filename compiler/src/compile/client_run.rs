//! The client's side around the program: its plaintext preprocessing (evaluating its graph
//! on the model inputs to get the program's inputs) and the assembly of the model's outputs.

use super::{ClientPart, OutputSource};
use crate::backend::nonlinear::clamp_mask_entry;
use crate::ir::{Data, Tensor};
use std::collections::HashMap;

/// Why the client's side around the program failed: names the input or output.
#[derive(Debug, thiserror::Error)]
pub enum ClientRunError {
    /// Evaluating the client's graph failed (names the node).
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// A program input with a NaN or +∞ entry.
    #[error("program input `{input}` has a non-finite value ({value})")]
    NonFinite {
        /// The program input.
        input: String,
        /// The entry.
        value: f32,
    },
    /// An output the program should have revealed is missing.
    #[error("the program revealed no output `{0}`")]
    NotRevealed(String),
    /// An output the client graph should have computed is missing.
    #[error("the client graph has no output {0}")]
    NoClientOutput(usize),
}

/// Program inputs (name, tensor) and the client graph's own outputs.
pub type Preprocessed = (Vec<(String, Tensor)>, Vec<Tensor>);

/// Evaluates the client's graph. Returns the program inputs (name, tensor: f32 or i64 data)
/// and the client graph's own outputs (indexed as in [`OutputSource::Client`]).
pub fn preprocess(
    c: &ClientPart,
    inputs: &HashMap<String, Tensor>,
) -> Result<Preprocessed, ClientRunError> {
    let outs = crate::eval::run_fast(&c.graph, inputs)?;
    let mut feeds = Vec::new();
    for (name, t) in c.feeds.iter().zip(&outs) {
        feeds.push((name.clone(), encode_feed(name, t, c.mask_value)?));
    }
    Ok((feeds, outs))
}

/// A feed as the VM takes it: reals as f32 (huge negative additive-mask entries replaced by
/// the finite mask value, as the compiler did for constants), integers and booleans as i64.
fn encode_feed(name: &str, t: &Tensor, mask_value: f32) -> Result<Tensor, ClientRunError> {
    Ok(match &t.data {
        Data::F32(v) => {
            let mut out = Vec::with_capacity(v.len());
            for &x in v {
                if !x.is_finite() && !(x == f32::NEG_INFINITY) {
                    return Err(ClientRunError::NonFinite { input: name.to_string(), value: x });
                }
                out.push(clamp_mask_entry(x, mask_value));
            }
            Tensor::f32(t.shape.clone(), out)
        }
        Data::F64(v) => Tensor::f32(
            t.shape.clone(),
            v.iter().map(|&x| clamp_mask_entry(x as f32, mask_value)).collect(),
        ),
        Data::I64(v) => Tensor::i64(t.shape.clone(), v.clone()),
        Data::Bool(v) => Tensor::i64(t.shape.clone(), v.iter().map(|&b| b as i64).collect()),
    })
}

/// The model's outputs in order, from the program's revealed outputs (name, shape, values) and
/// the client graph's own outputs.
pub fn assemble(
    c: &ClientPart,
    revealed: &[(String, Vec<usize>, Vec<f64>)],
    own: &[Tensor],
) -> Result<Vec<(String, Tensor)>, ClientRunError> {
    let mut out = Vec::new();
    for (name, src) in &c.outputs {
        let t = match src {
            OutputSource::Program(p) => {
                let (_, shape, data) = revealed
                    .iter()
                    .find(|(n, _, _)| n == p)
                    .ok_or_else(|| ClientRunError::NotRevealed(p.clone()))?;
                Tensor::f32(shape.clone(), data.iter().map(|&x| x as f32).collect())
            }
            OutputSource::Client(i) => {
                own.get(*i).cloned().ok_or(ClientRunError::NoClientOutput(*i))?
            }
        };
        out.push((name.clone(), t));
    }
    Ok(out)
}
