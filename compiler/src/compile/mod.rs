//! The compile driver: a model graph in, a two-party program and each party's share of the
//! artifacts out.
//!
//! The back half of the pipeline is one list, [`pipeline::BACK`] (layers, divisions, nonlinear
//! lowering to stdlib approximations, public folding), then bytecode lowering, then the
//! client's plaintext graph and the server's derived weights ([`assemble`]). The front half
//! (import passes, the nonlinear rewrite, public weights, generation) is
//! [`crate::recipe::Recipe::front`]; ARCHITECTURE.md shows both as one list.
//! [`artifacts`] writes and reads the three files a compile produces.

pub mod artifacts;
pub mod calibrate;
pub mod client_run;
mod fold;
pub mod guards;
pub mod layers;
pub mod leakage;
pub mod low_rank;
mod norm_affine;
pub mod pipeline;
pub mod pruned;
pub mod public;
pub mod secret_ops;
pub mod widen;

use crate::backend::client::{client_graph, ClientGraphError};
use crate::backend::lower::{lower, ClientFeed, LowerOptions};
use crate::backend::nonlinear::{Approximation, NonlinearError, NonlinearOptions};
use crate::backend::partition::{Partition, Vis};
use crate::ir::{Graph, Tensor, Value};
use serde::{Deserialize, Serialize};
use veil_isa::Program;

pub use fold::FoldError;

/// Why a compile failed. Each variant names the model and carries the typed error of the stage
/// that failed; the message includes that error's text (so it is not also a `source()`, which
/// would print it twice in a chain).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Token pruning could not place or compile its points (names the node or value).
    #[error("model `{model}`, token pruning: {error}")]
    Pruning {
        /// Model name.
        model: String,
        /// What failed.
        error: crate::prune::PruneError,
    },
    /// A division rewrite or public folding failed (names the node).
    #[error("model `{model}`: {error}")]
    Fold {
        /// Model name.
        model: String,
        /// What failed.
        error: FoldError,
    },
    /// Nonlinear lowering failed (names the node).
    #[error("model `{model}`: {error}")]
    Nonlinear {
        /// Model name.
        model: String,
        /// What failed.
        error: NonlinearError,
    },
    /// A stage of the back half left an invalid graph (a compiler bug; checked in debug and
    /// test builds).
    #[error("model `{model}`: stage `{stage}` produced an invalid graph:\n{errors}")]
    Stage {
        /// Model name.
        model: String,
        /// The stage.
        stage: &'static str,
        /// What the verifier found.
        errors: crate::ir::VerifyErrors,
    },
    /// Bytecode lowering failed.
    #[error("model `{model}`: {error}")]
    Lower {
        /// Model name.
        model: String,
        /// The lowering error (names the node).
        error: crate::backend::lower::LowerError,
    },
    /// A value the server derives from its weights could not be computed.
    #[error("model `{model}`: computing `{value}` from the server's weights: {error}")]
    ServerValue {
        /// Model name.
        model: String,
        /// The value.
        value: String,
        /// What failed.
        error: ServerValueError,
    },
    /// The client's plaintext part could not be built.
    #[error("model `{model}`: the client's part: {error}")]
    Client {
        /// Model name.
        model: String,
        /// What failed.
        error: ClientGraphError,
    },
    /// The program or the client's part would leak a secret (names the value).
    #[error("model `{model}`: refusing to write a leaky program: {error}")]
    Leak {
        /// Model name.
        model: String,
        /// What would leak.
        error: leakage::LeakError,
    },
    /// The produced program is invalid (a compiler bug).
    #[error("model `{model}`: the compiled program is invalid: {error}")]
    Invalid {
        /// Model name.
        model: String,
        /// The validator's complaint.
        error: veil_isa::validate::ValidateError,
    },
}

/// Why a value the server derives from its weights could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ServerValueError {
    /// It depends on a client input.
    #[error("it depends on the client's input `{0}`")]
    ClientInput(String),
    /// It depends on a value the server does not know alone.
    #[error("`{0}` is not known to the server alone")]
    NotServer(String),
    /// Evaluating a node on the way failed.
    #[error("node `{node}`: {error}")]
    Eval {
        /// The node.
        node: String,
        /// The evaluator's error.
        error: crate::eval::OpError,
    },
}

/// Compile options.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Fixed-point fractional bits.
    pub frac_bits: u8,
    /// Nonlinear lowering options.
    pub nonlinear: NonlinearOptions,
    /// Free-form metadata written into the program (source path, sequence length, ...).
    pub meta: Vec<(String, String)>,
    /// `(n, max)` while compiling a prunable model at length `n` (see [`pruned`]).
    pub token_len: Option<(usize, usize)>,
    /// Who hears the graph after each stage of the pipeline (`--dump-after`).
    pub observer: pipeline::Observer,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            frac_bits: 16,
            nonlinear: NonlinearOptions::default(),
            meta: Vec::new(),
            token_len: None,
            observer: pipeline::Observer::default(),
        }
    }
}

/// Where one model output comes from at the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OutputSource {
    /// Revealed to the client by the program (program output of this name).
    Program(String),
    /// Computed by the client alone: this output of the client graph.
    Client(usize),
}

/// Everything the client needs besides the program: its plaintext graph (only public data
/// and its own inputs), which program inputs it feeds, and how to assemble model outputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientPart {
    /// SHA-256 of the program this part belongs to.
    pub program_hash: [u8; 32],
    /// The client's graph: the model's inputs in, program feeds then own outputs out.
    pub graph: Graph,
    /// Program input names fed by the first outputs of `graph`, in order.
    pub feeds: Vec<String>,
    /// The model's outputs in order: name and source.
    pub outputs: Vec<(String, OutputSource)>,
    /// Finite value standing for huge negative additive-mask entries (≤ −1e9) in feeds.
    pub mask_value: f32,
}

/// A compiled model.
pub struct Compiled {
    /// The two-party program (public: both parties and the dealer hold it).
    pub program: Program,
    /// The client's part (public data only).
    pub client: ClientPart,
    /// The server's weights as the program declares them (private to the server).
    pub server_weights: Vec<(String, Tensor)>,
    /// Every nonlinear replacement made.
    pub approximations: Vec<Approximation>,
    /// Constants clamped (huge negative masks).
    pub clamped: Vec<String>,
    /// Visibility counts over the lowered graph's values: public, client, server, shared.
    pub visibility: [usize; 4],
    /// What the program reveals, as the leakage analysis found (what `veil connect` prints).
    pub reveals: veil_isa::Reveals,
}

/// Compiles `g`: `weight_vis` says who may see each weight (by name).
pub fn compile(
    g: Graph,
    weight_vis: &dyn Fn(&str) -> Vis,
    opts: &CompileOptions,
) -> Result<Compiled, CompileError> {
    let mut p = prepare(g, weight_vis, opts)?;
    let program = p.take_builder().finish();
    assemble(p, program)
}

/// A graph lowered to bytecode, before the program is finished.
pub(crate) struct Prepared {
    g: Graph,
    part: Partition,
    lowered: crate::backend::lower::Lowered,
    approximations: Vec<Approximation>,
    clamped: Vec<String>,
    mask_value: f32,
}

impl Prepared {
    /// The program builder, to finish (static or SSA for a template) before [`assemble`].
    pub(crate) fn take_builder(&mut self) -> veil_isa::builder::ProgramBuilder {
        std::mem::replace(&mut self.lowered.builder, veil_isa::builder::ProgramBuilder::new(16))
    }
}

/// The back half ([`pipeline::BACK`]) and bytecode lowering of `g`.
pub(crate) fn prepare(
    mut g: Graph,
    weight_vis: &dyn Fn(&str) -> Vis,
    opts: &CompileOptions,
) -> Result<Prepared, CompileError> {
    let model = g.name.clone();
    let (state, part) = pipeline::run_back(&mut g, weight_vis, opts)?;
    let pipeline::State { approximations, clamped, weight_sources, .. } = state;
    let lo = LowerOptions { frac_bits: opts.frac_bits, token_len: opts.token_len, weight_sources };
    let mut lowered = lower(&g, &part, &lo)
        .map_err(|error| CompileError::Lower { model: model.clone(), error })?;
    for (k, v) in &opts.meta {
        lowered.builder.meta(k, v);
    }
    Ok(Prepared {
        g,
        part,
        lowered,
        approximations,
        clamped,
        mask_value: opts.nonlinear.mask_value,
    })
}

/// The artifacts around a finished `program`: validation, the server's weights, the client's
/// part, the leakage checks.
pub(crate) fn assemble(p: Prepared, program: Program) -> Result<Compiled, CompileError> {
    let Prepared { g, part, lowered, approximations, clamped, mask_value } = p;
    let model = g.name.clone();
    veil_isa::validate(&program)
        .map_err(|error| CompileError::Invalid { model: model.clone(), error })?;

    let server_weights =
        server_values(&g, &part, &lowered.server_feeds).map_err(|(value, error)| {
            CompileError::ServerValue { model: model.clone(), value, error }
        })?;

    let cg = client_graph(&g, &part, &lowered.client_feeds, &lowered.client_outputs)
        .map_err(|error| CompileError::Client { model: model.clone(), error })?;
    leakage::check_client_graph(&cg, &server_weights)
        .map_err(|error| CompileError::Leak { model: model.clone(), error })?;
    let names: Vec<String> = g.outputs.iter().map(|&o| g.values[o].name.clone()).collect();
    let reveals = leakage::check_program(&program, &names)
        .and_then(|r| leakage::check_constants(&program, &server_weights).map(|()| r))
        .map_err(|error| CompileError::Leak { model: model.clone(), error })?;
    let mut outputs = Vec::new();
    for &o in &g.outputs {
        let name = g.values[o].name.clone();
        let src = match lowered.client_outputs.iter().position(|&c| c == o) {
            Some(i) => OutputSource::Client(lowered.client_feeds.len() + i),
            None => OutputSource::Program(name.clone()),
        };
        outputs.push((name, src));
    }
    let client = ClientPart {
        program_hash: program.hash(),
        graph: cg,
        feeds: lowered.client_feeds.iter().map(|(n, _)| n.clone()).collect(),
        outputs,
        mask_value,
    };
    let mut visibility = [0; 4];
    for (v, _) in g.values.iter() {
        visibility[part.vis[v] as usize] += 1;
    }
    Ok(Compiled { program, client, server_weights, approximations, clamped, visibility, reveals })
}

/// Computes the server's program weights: its own weights and what it derives from them with
/// public data (transposes, rows gathered by public indices), evaluated now.
fn server_values(
    g: &Graph,
    part: &Partition,
    feeds: &[(String, Value)],
) -> Result<Vec<(String, Tensor)>, (String, ServerValueError)> {
    let mut env: std::collections::HashMap<Value, Tensor> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (name, v) in feeds {
        let t = eval_server(g, part, *v, &mut env).map_err(|m| (name.clone(), m))?;
        out.push((name.clone(), t));
    }
    Ok(out)
}

fn eval_server(
    g: &Graph,
    part: &Partition,
    v: Value,
    env: &mut std::collections::HashMap<Value, Tensor>,
) -> Result<Tensor, ServerValueError> {
    if let Some(t) = env.get(&v) {
        return Ok(t.clone());
    }
    let vd = &g.values[v];
    let t = match &vd.def {
        crate::ir::ValueDef::Const(t) | crate::ir::ValueDef::Weight(t) => (**t).clone(),
        crate::ir::ValueDef::Input => return Err(ServerValueError::ClientInput(vd.name.clone())),
        crate::ir::ValueDef::Result(n) => {
            if !matches!(part.vis[v], Vis::Server | Vis::Public) {
                return Err(ServerValueError::NotServer(vd.name.clone()));
            }
            let nd = &g.nodes[*n];
            let mut args = Vec::new();
            for &a in &nd.args {
                args.push(eval_server(g, part, a, env)?);
            }
            let refs: Vec<&Tensor> = args.iter().collect();
            crate::eval::eval_op(&nd.op, &refs, &vd.ty)
                .map_err(|error| ServerValueError::Eval { node: nd.name.clone(), error })?
        }
    };
    env.insert(v, t.clone());
    Ok(t)
}

/// Whether a client feed is the value itself or an encoding of it (for the summary).
pub fn feed_kind(f: &ClientFeed) -> &'static str {
    match f {
        ClientFeed::Value(_) => "value",
        ClientFeed::OneHot(..) => "one-hot",
    }
}
