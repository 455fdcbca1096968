//! Private text generation: one program that runs the prefill of a `P`-token prompt and `N - 1`
//! one-token decode steps of a causal decoder, with the KV cache kept secret-shared between
//! steps and each next token chosen by a secure argmax.
//!
//! Supported exports: decoders exported *without* a KV cache (GPT-2 family `GPT2LMHeadModel`,
//! static `[1, S]` ids, logits `[1, S, V]`, causal mask in the graph) and the same written in
//! the DSL. The decode step is derived from that graph ([`roles`]): every token row is computed
//! alone except inside attention, where the keys and values of earlier rows come from the cache
//! ([`window`]). A step's cost is therefore one token's, not the whole prefix's.
//!
//! What is revealed: the `N` token ids, to the client only (program outputs). The server sees
//! nothing; the next token's embedding is `one_hot(token) · table` computed on shares, so the
//! server learns neither the prompt nor the continuation, and the cache is never opened.

pub mod causal;
pub mod past;
pub mod roles;
pub mod window;

use crate::ir::shape::ShapeError;
use crate::ir::{Graph, Op, Provenance, Step, TensorType, Value};

/// Why a decoder cannot generate, or generation could not be built or run: names the model,
/// node or value, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// `--top-k` without sampling, or k = 0.
    #[error("top-k filtering needs sampling (a temperature above 0) and k >= 1")]
    TopK,
    /// An empty prompt or no new token.
    #[error("generation needs a prompt of at least one token and at least one new token")]
    Empty,
    /// The prompt and the new tokens exceed the model's positions.
    #[error(
        "model `{model}` was exported for {seq} positions: a {prompt}-token prompt leaves room \
         for at most {} new tokens, {asked} asked",
        seq + 1 - prompt
    )]
    TooLong {
        /// The model.
        model: String,
        /// Its positions.
        seq: usize,
        /// Prompt tokens.
        prompt: usize,
        /// New tokens asked.
        asked: usize,
    },
    /// Not exactly one output.
    #[error("model `{model}`: generation needs exactly one output, the logits")]
    Outputs {
        /// The model.
        model: String,
    },
    /// The output is not per-token logits.
    #[error("model `{model}`: output `{output}` {ty} is not per-token logits ([…, S, V])")]
    NotLogits {
        /// The model.
        model: String,
        /// The output.
        output: String,
        /// Its type.
        ty: TensorType,
    },
    /// The token table and the vocabulary differ.
    #[error(
        "model `{model}`: the token table `{table}` has {rows} rows but the logits {vocab} \
         entries: a generated token could fall outside the table"
    )]
    TableSize {
        /// The model.
        model: String,
        /// The embedding table.
        table: String,
        /// Its rows.
        rows: usize,
        /// Logits per token.
        vocab: usize,
    },
    /// Not exactly one integer input.
    #[error(
        "model `{model}`: generation needs exactly one input, the token ids (int, [1, S]); it \
         has {inputs}"
    )]
    Inputs {
        /// The model.
        model: String,
        /// Its inputs and their types.
        inputs: String,
    },
    /// A batch of more than one.
    #[error("model `{model}`: generation needs a batch of one, the ids are {ty}")]
    Batch {
        /// The model.
        model: String,
        /// The ids' type.
        ty: TensorType,
    },
    /// A node that mixes token rows outside attention (or rows that cannot be told apart).
    #[error(
        "model `{model}`, node `{node}`: {why}; generation needs a causal decoder whose token \
         rows are computed independently except through attention"
    )]
    NotCausal {
        /// The model.
        model: String,
        /// The node (`-` for the model as a whole).
        node: String,
        /// What it does.
        why: String,
    },
    /// Attention without a causal mask.
    #[error(
        "model `{model}`, node `{node}`: attention is not hidden from later positions (no \
         causal mask before it): not a causal decoder"
    )]
    Unmasked {
        /// The model.
        model: String,
        /// The normalisation node.
        node: String,
    },
    /// Attention without a normalisation over keys.
    #[error("model `{model}`: attention has no normalisation over key positions")]
    NoNormalisation {
        /// The model.
        model: String,
    },
    /// A constant could not be sliced to a window.
    #[error("slicing constant `{value}`: {error}")]
    SliceConst {
        /// The constant.
        value: String,
        /// The evaluator's error.
        error: crate::eval::OpError,
    },
    /// A strided slice of a positional table.
    #[error("node `{node}`: a strided slice of a position table")]
    StridedPositions {
        /// The node.
        node: String,
    },
    /// A second input.
    #[error("input `{0}` is not the token ids")]
    OtherInput(String),
    /// A value used before it is computed.
    #[error("`{0}` is used before it is computed")]
    UsedBeforeComputed(String),
    /// A node of a window does not fit its arguments.
    #[error("node `{node}`{}: {error}", window.map_or(String::new(), |(a, b)| format!(" in the window [{a}, {b})")))]
    Shape {
        /// The source node.
        node: String,
        /// The window's rows, for the node's own copy.
        window: Option<(usize, usize)>,
        /// The shape error.
        error: ShapeError,
    },
    /// A node choosing a token does not fit its arguments.
    #[error("token {token}: node `{node}`: {error}")]
    Token {
        /// The token.
        token: usize,
        /// The node.
        node: String,
        /// The shape error.
        error: ShapeError,
    },
    /// The model has no output.
    #[error("the model has no output")]
    NoOutput,
    /// Sampling noise of the wrong size.
    #[error("the sampling noise must hold {0} × vocabulary values")]
    Noise(usize),
    /// A reference generation that does not fit the positions.
    #[error("a {prompt}-token prompt and {max_new} new tokens do not fit {seq} positions")]
    NoFit {
        /// Prompt tokens.
        prompt: usize,
        /// New tokens.
        max_new: usize,
        /// The model's positions.
        seq: usize,
    },
    /// The plaintext reference failed (names the node).
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// An export with past key/values whose cache interface veil does not recognise.
    #[error(transparent)]
    Past(#[from] past::PastError),
}

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenerateOptions {
    /// Prompt length in tokens (the prefill's rows).
    pub prompt_len: usize,
    /// Tokens to generate.
    pub max_new: usize,
    /// Sample instead of taking the argmax: the client feeds `sample_noise` `[N, V]`, added to
    /// each token's logits before the argmax (Gumbel noise times the temperature: the Gumbel-max
    /// trick draws from `softmax(logits / T)`).
    pub sample: bool,
    /// With `sample`: only the `k` most likely tokens can be drawn (top-k filtering on shares,
    /// before the noise is added).
    pub top_k: Option<usize>,
}

/// Name of the client input holding the sampling noise.
pub const NOISE_INPUT: &str = "sample_noise";

/// Gumbel noise `T·(−ln(−ln u))` for `n` tokens over a vocabulary of `v`, from `seed`: what
/// the client feeds as [`NOISE_INPUT`] to sample at temperature `T` (0 = greedy).
pub fn gumbel_noise(n: usize, v: usize, temperature: f64, seed: u64) -> Vec<f32> {
    // SplitMix64: a fixed, documented stream, so a seed reproduces a sample anywhere.
    let mut rng = crate::weights::SplitMix(seed);
    (0..n * v)
        .map(|_| {
            let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (temperature * -(-u.ln()).ln()) as f32
        })
        .collect()
}

/// Name of the program output holding generated token `t`.
pub fn token_output(t: usize) -> String {
    format!("token.{t}")
}

/// The generation graph of decoder `src`: input = the prompt ids `[1, P]`, outputs = the `N`
/// greedy tokens `token.0 … token.{N-1}` (each `[1, 1]` i64).
pub fn generation_graph(src: &Graph, opts: GenerateOptions) -> Result<Graph, GenerateError> {
    // Layer names first, so that every window's nodes keep their layer in the cost report.
    let mut named = src.clone();
    crate::compile::layers::assign_layers(&mut named);
    let src = &named;
    let roles = roles::analyze(src)?;
    let (p, n, s) = (opts.prompt_len, opts.max_new, roles.seq);
    if opts.top_k.is_some_and(|k| k == 0 || !opts.sample) {
        return Err(GenerateError::TopK);
    }
    if p == 0 || n == 0 {
        return Err(GenerateError::Empty);
    }
    if p + n - 1 > s {
        return Err(GenerateError::TooLong {
            model: src.name.clone(),
            seq: s,
            prompt: p,
            asked: n,
        });
    }
    let logits = match src.outputs.as_slice() {
        [o] => *o,
        _ => return Err(GenerateError::Outputs { model: src.name.clone() }),
    };
    let lr = src.values[logits].ty.shape.len();
    let qa = (0..lr).find(|&a| roles.get(logits, a) == roles::Role::Query);
    let Some(qa) = qa.filter(|_| lr >= 2 && roles.get(logits, lr - 1) == roles::Role::None) else {
        return Err(GenerateError::NotLogits {
            model: src.name.clone(),
            output: src.values[logits].name.clone(),
            ty: src.values[logits].ty.clone(),
        });
    };
    // A generated token indexes the embedding table: the vocabulary must be its rows.
    let vocab_out = src.values[logits].ty.shape[lr - 1];
    let mut from_ids = std::collections::HashSet::from([roles.ids]);
    for &n in &src.order {
        let nd = &src.nodes[n];
        if nd.args.iter().any(|a| from_ids.contains(a)) {
            from_ids.insert(nd.result);
            if let Op::Gather { axis } = nd.op {
                let rows = src.values[nd.args[0]].ty.shape[axis];
                if from_ids.contains(&nd.args[1]) && rows != vocab_out {
                    return Err(GenerateError::TableSize {
                        model: src.name.clone(),
                        table: src.values[nd.args[0]].name.clone(),
                        rows,
                        vocab: vocab_out,
                    });
                }
            }
        }
    }
    let ids_ty = src.values[roles.ids].ty.clone();
    let ids_axis = ids_ty.shape.len() - 1;
    let with_len = |len: usize| {
        let mut s = ids_ty.shape.clone();
        s[ids_axis] = len;
        TensorType::new(ids_ty.dtype, s)
    };
    let mut e = window::Emitter::new(src, &roles, &format!("{}.generate", src.name));
    let ids = e.dst.add_input(&src.values[roles.ids].name, with_len(p));
    let vocab = src.values[logits].ty.shape[lr - 1];
    let noise = if opts.sample {
        let ty = TensorType::new(crate::ir::DType::F32, vec![n, vocab]);
        Some(e.dst.add_input(NOISE_INPUT, ty))
    } else {
        None
    };
    let mut env = e.window(ids, 0, p, "prefill")?;
    let mut outputs: Vec<Value> = Vec::new();
    for t in 0..n {
        let step = if t == 0 { "prefill".to_string() } else { format!("tok{t}") };
        let l = env[&logits];
        let shape = e.dst.values[l].ty.shape.clone();
        let mut start = vec![0; lr];
        start[qa] = shape[qa] - 1;
        let mut len = shape.clone();
        len[qa] = 1;
        let err = |node: String| move |error| GenerateError::Token { token: t, node, error };
        let at = |site: Option<&str>| Provenance {
            step: Step::parse(&step),
            site: site.map(String::from),
            ..Provenance::default()
        };
        e.dst.cursor = at(None);
        let row = e
            .dst
            .add_node(
                &format!("{step}/next"),
                Op::Slice { start, step: vec![1; lr], len },
                &[l],
                &format!("{step}/last_logits"),
            )
            .map_err(err(format!("{step}/next")))?;
        e.dst.cursor = at(Some("top_k"));
        let row = match opts.top_k {
            Some(k) => e
                .dst
                .add_node(
                    &format!("{step}/next::top_k"),
                    Op::KeepTopK { axis: lr - 1, k },
                    &[row],
                    &format!("{step}/top_k"),
                )
                .map_err(err(format!("{step}/next::top_k")))?,
            None => row,
        };
        e.dst.cursor = at(None);
        let row = match noise {
            Some(z) => {
                let zt = e
                    .dst
                    .add_node(
                        &format!("{step}/noise"),
                        Op::Slice { start: vec![t, 0], step: vec![1, 1], len: vec![1, vocab] },
                        &[z],
                        &format!("{step}/noise"),
                    )
                    .map_err(err(format!("{step}/noise")))?;
                let shape = e.dst.values[row].ty.shape.clone();
                let zt = e
                    .dst
                    .add_node(
                        &format!("{step}/noise"),
                        Op::Reshape { shape },
                        &[zt],
                        &format!("{step}/noise_row"),
                    )
                    .map_err(err(format!("{step}/noise")))?;
                e.dst.cursor = at(Some("sample"));
                e.dst
                    .add_node(
                        &format!("{step}/next::sample"),
                        Op::Add,
                        &[row, zt],
                        &format!("{step}/noisy_logits"),
                    )
                    .map_err(err(format!("{step}/next::sample")))?
            }
            None => row,
        };
        e.dst.cursor = at(Some("argmax"));
        let tok = e
            .dst
            .add_node(
                &format!("{step}/next::argmax"),
                Op::ArgMax { axis: lr - 1 },
                &[row],
                &format!("{step}/argmax"),
            )
            .map_err(err(format!("{step}/next::argmax")))?;
        e.dst.cursor = at(None);
        let tok = e
            .dst
            .add_node(
                &format!("{step}/next"),
                Op::Reshape { shape: with_len(1).shape },
                &[tok],
                &token_output(t),
            )
            .map_err(err(format!("{step}/next")))?;
        outputs.push(tok);
        if t + 1 < n {
            env = e.window(tok, p + t, p + t + 1, &format!("tok{}", t + 1))?;
        }
    }
    let mut g = e.dst;
    g.cursor = Provenance::default();
    g.outputs = outputs;
    g.remove_dead_nodes();
    Ok(g.compact())
}

/// Plaintext generation with the *original* graph (no cache: the whole padded sequence is
/// recomputed per token and the row of the last real token read), greedy or with `noise`
/// (`[N·V]`, as fed to [`NOISE_INPUT`]) added to the logits: the reference that the two-party
/// generation must equal. Also returns, per token, the gap between the best and the second
/// best score (how much fixed-point error the choice tolerates).
pub fn reference_generation(
    src: &Graph,
    prompt: &[i64],
    max_new: usize,
    noise: Option<&[f32]>,
    top_k: Option<usize>,
) -> Result<(Vec<i64>, Vec<f64>), GenerateError> {
    let roles = roles::analyze(src)?;
    let ty = src.values[roles.ids].ty.clone();
    let logits = *src.outputs.first().ok_or(GenerateError::NoOutput)?;
    let s = roles.seq;
    if noise.is_some_and(|z| {
        z.len() != max_new * src.values[logits].ty.shape.last().copied().unwrap_or(0)
    }) {
        return Err(GenerateError::Noise(max_new));
    }
    if prompt.is_empty() || max_new == 0 || prompt.len() + max_new - 1 > s {
        return Err(GenerateError::NoFit { prompt: prompt.len(), max_new, seq: s });
    }
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    let mut gaps = Vec::new();
    for step in 0..max_new {
        let mut padded = ids.clone();
        padded.resize(s, 0);
        let t = crate::ir::Tensor::i64(ty.shape.clone(), padded);
        let inputs = std::collections::HashMap::from([(src.values[roles.ids].name.clone(), t)]);
        let res = crate::eval::run_values(src, &inputs, &[logits])?;
        let l = &res[0];
        let v = *l.shape.last().unwrap_or(&1);
        let row = ids.len() - 1;
        let logit = |j: usize| l.get_f64(row * v + j);
        // Top-k as the program does it: below the k-th largest, lowered by TOP_K_DROP.
        let kth = top_k.map(|k| {
            let mut r: Vec<f64> = (0..v).map(logit).collect();
            r.sort_by(|a, b| b.total_cmp(a));
            r[k.clamp(1, v) - 1]
        });
        let drop = |j: usize| match kth {
            Some(t) if logit(j) < t => crate::ir::TOP_K_DROP,
            _ => 0.0,
        };
        let score = |j: usize| logit(j) - drop(j) + noise.map_or(0.0, |z| z[step * v + j] as f64);
        let mut best = 0;
        for j in 1..v {
            if score(j) > score(best) {
                best = j;
            }
        }
        let second = (0..v).filter(|&j| j != best).map(score).fold(f64::NEG_INFINITY, f64::max);
        gaps.push(score(best) - second);
        out.push(best as i64);
        ids.push(best as i64);
    }
    Ok((out, gaps))
}
