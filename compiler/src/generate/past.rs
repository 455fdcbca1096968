//! Decoders exported with past key/values (Optimum's `text-generation-with-past`: the decoder,
//! the decoder with past, and the merged decoder with an `If` on `use_cache_branch`), read as
//! the decoder without past that generation is derived from.
//!
//! veil keeps its own secret-shared cache, so the export's cache interface is bound away at
//! import: every past input becomes an empty tensor (past length 0, its `Concat` with the new
//! keys then disappears), `attention_mask` all ones and `position_ids` `0…S−1` (one unpadded
//! sequence), `use_cache_branch` false, and only the logits are kept (the present outputs are
//! the keys and values the cache analysis finds again inside attention). The layout — which
//! input is layer i's key or value, which axis is the past's sequence — is read from the
//! inputs and checked, so an export veil does not understand is refused with the input named.

use crate::frontend::onnx::ImportOptions;
use crate::ir::{DType, Tensor, TensorType};
use std::collections::BTreeMap;
use veil_onnx_proto::{tensor_shape_proto::dimension::Value as D, type_proto, Message, ModelProto};

/// Why an export's cache interface is not one veil recognises (names the input; the caller
/// names the file).
#[derive(Debug, thiserror::Error)]
pub enum PastError {
    /// The file could not be read or decoded.
    #[error("{msg}")]
    File {
        /// What failed.
        msg: String,
    },
    /// A past or present tensor, or an auxiliary input, that does not fit the layout.
    #[error("{what} `{name}` {why}")]
    Layout {
        /// `input` or `output`.
        what: &'static str,
        /// Its name.
        name: String,
        /// What was expected.
        why: String,
    },
    /// No sequence length to generate in.
    #[error(
        "input `{ids}` has the symbolic length `{dim}`: give the generation window with \
         --seq N (prompt + new tokens − 1 ≤ N)"
    )]
    NoLength {
        /// The token-ids input.
        ids: String,
        /// Its symbolic length.
        dim: String,
    },
}

/// One axis of a declared input or output.
#[derive(Clone, Debug, PartialEq)]
enum Dim {
    Fixed(usize),
    Symbolic(String),
}

/// A declared graph input or output.
#[derive(Clone, Debug)]
struct Decl {
    name: String,
    dtype: Option<DType>,
    dims: Vec<Dim>,
}

/// Layer `i`'s key and value past inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct PastLayer {
    /// The key's input name.
    pub key: String,
    /// The value's input name.
    pub value: String,
}

/// The cache interface of an export with past key/values.
#[derive(Clone, Debug)]
pub struct PastLayout {
    /// Per layer, its past key and value inputs (empty for a decoder exported without past
    /// inputs that still returns presents, like Optimum's `decoder_model.onnx`).
    pub layers: Vec<PastLayer>,
    /// The past's sequence axis (the same in every past tensor).
    pub past_axis: usize,
    /// The symbolic name of the past length.
    pub past_dim: Option<String>,
    /// The present outputs, dropped.
    pub presents: Vec<String>,
    /// The logits output, kept.
    pub logits: String,
    /// The token-ids input.
    pub ids: String,
    /// Inputs bound at import, by name (mask, positions, branch flag, pasts).
    auxiliary: Vec<String>,
    /// Every declared input.
    inputs: Vec<Decl>,
}

/// Auxiliary inputs of a with-past export, bound to constants for one unpadded sequence.
const MASK: &str = "attention_mask";
const POSITIONS: &str = "position_ids";
const BRANCH: &str = "use_cache_branch";

/// `past_key_values.3.key` → (3, "key"): the layer index and the part after it.
fn layer_of(name: &str, prefix: &str) -> Option<(usize, bool)> {
    if !name.starts_with(prefix) {
        return None;
    }
    let rest = &name[prefix.len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let digits: String = rest[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = &rest[start + digits.len()..];
    let is_key = if after.contains("key") {
        true
    } else if after.contains("value") {
        false
    } else {
        return None;
    };
    Some((digits.parse().ok()?, is_key))
}

fn decls(vis: &[veil_onnx_proto::ValueInfoProto], skip: &[&str]) -> Vec<Decl> {
    vis.iter()
        .filter(|v| !skip.contains(&v.name.as_deref().unwrap_or_default()))
        .map(|v| {
            let tt = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(t)) => Some(t),
                _ => None,
            };
            let dims = tt
                .and_then(|t| t.shape.as_ref())
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(D::DimValue(x)) if *x >= 0 => Dim::Fixed(*x as usize),
                            Some(D::DimParam(p)) => Dim::Symbolic(p.clone()),
                            _ => Dim::Symbolic("?".into()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Decl {
                name: v.name.clone().unwrap_or_default(),
                dtype: tt.and_then(|t| DType::from_onnx(t.elem_type.unwrap_or(0)).ok()),
                dims,
            }
        })
        .collect()
}

/// The cache interface of ONNX file `path`, or `None` when it has none (no past input, no
/// present output): a model veil generates from, or refuses, as it is.
pub fn layout(path: &std::path::Path) -> Result<Option<PastLayout>, PastError> {
    let file = |msg: String| PastError::File { msg };
    let bytes = std::fs::read(path).map_err(|e| file(format!("cannot read it: {e}")))?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| file(format!("not a valid ONNX model: {e}")))?;
    let Some(g) = model.graph else { return Ok(None) };
    let inits: Vec<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    recognise(&decls(&g.input, &inits), &decls(&g.output, &[]))
}

fn recognise(inputs: &[Decl], outputs: &[Decl]) -> Result<Option<PastLayout>, PastError> {
    let bad = |what: &'static str, name: &str, why: String| PastError::Layout {
        what,
        name: name.to_string(),
        why,
    };
    let mut pasts: BTreeMap<usize, (Option<&Decl>, Option<&Decl>)> = BTreeMap::new();
    let mut aux = Vec::new();
    let mut others = Vec::new();
    for d in inputs {
        if let Some((layer, is_key)) = layer_of(&d.name, "past") {
            let e = pasts.entry(layer).or_default();
            let slot = if is_key { &mut e.0 } else { &mut e.1 };
            if let Some(prev) = slot {
                return Err(bad(
                    "input",
                    &d.name,
                    format!("is a second past {} of layer {layer} (`{}`)", kv(is_key), prev.name),
                ));
            }
            *slot = Some(d);
        } else if [MASK, POSITIONS, BRANCH].contains(&d.name.as_str()) {
            aux.push(d);
        } else {
            others.push(d);
        }
    }
    let presents: Vec<&Decl> =
        outputs.iter().filter(|d| layer_of(&d.name, "present").is_some()).collect();
    // An attention mask alone (an encoder's, a decoder exported without a cache) is not a
    // cache interface: such models are taken as they are, and refused there if need be.
    if pasts.is_empty() && presents.is_empty() {
        return Ok(None);
    }
    let ids = match others.as_slice() {
        [one] => one,
        _ => {
            let names: Vec<String> = others.iter().map(|d| format!("`{}`", d.name)).collect();
            return Err(PastError::Layout {
                what: "input",
                name: names.first().map(|n| n.trim_matches('`').to_string()).unwrap_or_default(),
                why: format!(
                    "is one of {} inputs besides the past key/values, `{MASK}`, `{POSITIONS}` \
                     and `{BRANCH}` ({}): a decoder with past needs exactly one, the token ids",
                    others.len(),
                    names.join(", ")
                ),
            });
        }
    };
    // Layers 0…L−1, each with a key and a value, all of one float type and shape except the
    // past's sequence axis, which is one symbolic dimension shared by all.
    let mut layers = Vec::new();
    let mut first: Option<&Decl> = None;
    let mut past_axis = 0;
    let mut past_dim = None;
    for (i, (&layer, (k, v))) in pasts.iter().enumerate() {
        let (k, v) = match (k, v) {
            (Some(k), Some(v)) => (*k, *v),
            (Some(d), None) | (None, Some(d)) => {
                return Err(bad(
                    "input",
                    &d.name,
                    format!(
                        "has no matching past {} for layer {layer}",
                        kv(d.name.contains("value"))
                    ),
                ))
            }
            (None, None) => continue,
        };
        if layer != i {
            return Err(bad(
                "input",
                &k.name,
                format!("is layer {layer}, but layer {i} has no past"),
            ));
        }
        for d in [k, v] {
            if !d.dtype.is_some_and(|t| t.is_float()) {
                return Err(bad("input", &d.name, "must be a float tensor".into()));
            }
            match first {
                None => {
                    let sym: Vec<usize> = (0..d.dims.len())
                        .filter(|&a| matches!(&d.dims[a], Dim::Symbolic(s) if !s.to_lowercase().contains("batch")))
                        .collect();
                    let [a] = sym.as_slice() else {
                        return Err(bad(
                            "input",
                            &d.name,
                            format!(
                                "has shape [{}]: expected one symbolic past-length axis besides the batch (e.g. [batch, heads, past_sequence_length, head_dim])",
                                show(&d.dims)
                            ),
                        ));
                    };
                    past_axis = *a;
                    past_dim = match &d.dims[*a] {
                        Dim::Symbolic(s) => Some(s.clone()),
                        Dim::Fixed(_) => None,
                    };
                    first = Some(d);
                }
                Some(f) if f.dims.len() != d.dims.len() || f.dims[past_axis] != d.dims[past_axis] => {
                    return Err(bad(
                        "input",
                        &d.name,
                        format!(
                            "has shape [{}], but `{}` has [{}]: every past key and value must have the same past-length axis",
                            show(&d.dims),
                            f.name,
                            show(&f.dims)
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        layers.push(PastLayer { key: k.name.clone(), value: v.name.clone() });
    }
    if !pasts.is_empty() && presents.len() != 2 * layers.len() {
        return Err(bad(
            "input",
            &layers[0].key,
            format!(
                "is one of {} past inputs, but the model has {} present outputs: expected one present per past",
                2 * layers.len(),
                presents.len()
            ),
        ));
    }
    let kept: Vec<&Decl> =
        outputs.iter().filter(|d| layer_of(&d.name, "present").is_none()).collect();
    let logits = match kept.as_slice() {
        [one] => one.name.clone(),
        _ => match kept.iter().find(|d| d.name == "logits") {
            Some(d) => d.name.clone(),
            None => {
                return Err(bad(
                    "output",
                    &kept.first().map(|d| d.name.clone()).unwrap_or_default(),
                    format!(
                        "is one of {} outputs besides the presents: expected one, the logits",
                        kept.len()
                    ),
                ))
            }
        },
    };
    for d in &aux {
        let ok = match d.name.as_str() {
            BRANCH => d.dtype == Some(DType::Bool) && d.dims.iter().all(|x| *x == Dim::Fixed(1)),
            _ => d.dtype.is_some_and(|t| t.is_int()) && d.dims.len() == 2,
        };
        if !ok {
            let want = match d.name.as_str() {
                BRANCH => "a single boolean",
                _ => "integers of shape [batch, length]",
            };
            return Err(bad("input", &d.name, format!("must be {want}")));
        }
    }
    let mut auxiliary: Vec<String> = aux.iter().map(|d| d.name.clone()).collect();
    auxiliary.extend(layers.iter().flat_map(|l| [l.key.clone(), l.value.clone()]));
    Ok(Some(PastLayout {
        layers,
        past_axis,
        past_dim,
        presents: presents.iter().map(|d| d.name.clone()).collect(),
        logits,
        ids: ids.name.clone(),
        auxiliary,
        inputs: inputs.to_vec(),
    }))
}

fn kv(is_key: bool) -> &'static str {
    if is_key {
        "key"
    } else {
        "value"
    }
}

fn show(dims: &[Dim]) -> String {
    dims.iter()
        .map(|d| match d {
            Dim::Fixed(x) => x.to_string(),
            Dim::Symbolic(s) => s.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl PastLayout {
    /// Import options that read the export as the decoder without past, `opts` (the user's
    /// `--seq`, `--batch`, `--dim`) giving its length.
    pub fn plain_decoder(&self, opts: &ImportOptions) -> Result<ImportOptions, PastError> {
        let decl = |n: &str| self.inputs.iter().find(|d| d.name == n);
        let ids = decl(&self.ids).ok_or_else(|| PastError::File {
            msg: format!("input `{}` is not declared", self.ids),
        })?;
        let seq = match ids.dims.last() {
            Some(Dim::Fixed(s)) => *s,
            Some(Dim::Symbolic(d)) => {
                let by_name = opts.dims.iter().find(|(n, _)| n == d).map(|&(_, v)| v);
                by_name
                    .or(opts.seq)
                    .ok_or_else(|| PastError::NoLength { ids: self.ids.clone(), dim: d.clone() })?
            }
            None => {
                return Err(PastError::Layout {
                    what: "input",
                    name: self.ids.clone(),
                    why: "must be token ids of shape [batch, length]".into(),
                })
            }
        };
        let mut out = opts.clone();
        // Exact names bind before `--seq`, which would also catch `past_sequence_length`.
        let mut bind = |d: &Dim, v: usize| {
            if let Dim::Symbolic(s) = d {
                if !out.dims.iter().any(|(n, _)| n == s) {
                    out.dims.push((s.clone(), v));
                }
            }
        };
        for name in &self.auxiliary {
            let Some(d) = decl(name) else { continue };
            let last = d.dims.len().saturating_sub(1);
            let mut shape = Vec::with_capacity(d.dims.len());
            for (a, dim) in d.dims.iter().enumerate() {
                let v = match (name.as_str(), dim) {
                    (_, Dim::Fixed(x)) => *x,
                    (MASK | POSITIONS, _) if a == last => seq,
                    (BRANCH | MASK | POSITIONS, _) => 1,
                    _ if a == self.past_axis => 0,
                    _ => 1,
                };
                bind(dim, v);
                shape.push(v);
            }
            let n: usize = shape.iter().product();
            let t = match name.as_str() {
                BRANCH => Tensor::bool(shape, vec![false; n]),
                MASK => int_tensor(d.dtype, shape, vec![1; n]),
                POSITIONS => int_tensor(d.dtype, shape, (0..n as i64).collect()),
                _ => Tensor::zeros(&TensorType::new(d.dtype.unwrap_or(DType::F32), shape)),
            };
            out.const_inputs.insert(name.clone(), t);
        }
        if let Some(Dim::Symbolic(s)) = ids.dims.last() {
            bind(&Dim::Symbolic(s.clone()), seq);
        }
        Ok(out)
    }
}

fn int_tensor(dtype: Option<DType>, shape: Vec<usize>, v: Vec<i64>) -> Tensor {
    let t = Tensor::i64(shape, v);
    match dtype {
        Some(d) if d != DType::I64 => {
            let ty = TensorType::new(d, t.shape.clone());
            crate::eval::eval_op(&crate::ir::Op::Cast { to: d }, &[&t], &ty).unwrap_or(t)
        }
        _ => t,
    }
}
