//! The back half of the compile pipeline as one list ([`BACK`]): graph-to-graph stages with
//! one signature, run in order on the graph the recipe's front half produced, then lowered to
//! bytecode. The partition (who may see each value) is an analysis cached between stages and
//! recomputed only after a stage changed the graph; in debug and test builds the IR verifier
//! runs after every stage that changed it. Every stage is reported to the options' observer
//! (`veil compile --dump-after STAGE`).

use super::fold::WeightSources;
use super::{fold, layers, CompileError, CompileOptions};
use crate::backend::nonlinear::{lower_nonlinear, Approximation};
use crate::backend::partition::{analyze, Partition, Vis};
use crate::ir::Graph;
use std::sync::Arc;

/// What the stages share: the inputs of the compile, and what stages leave for the lowering
/// and the report.
pub struct State<'a> {
    /// Who may see each weight, by name.
    pub weight_vis: &'a dyn Fn(&str) -> Vis,
    /// The compile options.
    pub opts: &'a CompileOptions,
    /// Every nonlinear replacement made.
    pub approximations: Vec<Approximation>,
    /// Constants clamped (huge negative masks).
    pub clamped: Vec<String>,
    /// Where the server's derived program weights come from (public folding).
    pub weight_sources: WeightSources,
}

/// Whether a stage changed the graph (so the partition must be recomputed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// It did.
    Yes,
    /// It did not.
    No,
}

/// One stage of the back half.
pub struct Stage {
    /// Its name (`--dump-after NAME`).
    pub name: &'static str,
    /// What it does, in a line.
    pub about: &'static str,
    /// Runs it.
    pub run: fn(&mut Graph, &Partition, &mut State) -> Result<Changed, CompileError>,
}

fn fold_err(g: &Graph) -> impl Fn(fold::FoldError) -> CompileError + '_ {
    move |error| CompileError::Fold { model: g.name.clone(), error }
}

/// [`Changed::Yes`] when a stage rewrote `n > 0` nodes.
fn changed(n: usize) -> Changed {
    if n > 0 {
        Changed::Yes
    } else {
        Changed::No
    }
}

/// The back half, in order. Adding a stage: a function of this signature in the module that
/// owns the transformation, and a line here.
pub const BACK: &[Stage] = &[
    Stage {
        name: "widen_floats",
        about: "float16/bfloat16 retyped to float32 (fixed point has one representation for all reals)",
        run: |g, _, _| Ok(changed(super::widen::widen_floats(g))),
    },
    Stage {
        name: "assign_layers",
        about: "each node's layer recorded in its provenance (cost reports, calibration keys)",
        run: |g, _, _| {
            layers::assign_layers(g);
            Ok(Changed::No)
        },
    },
    Stage {
        name: "fold_guards",
        about: "IsNaN of secret data (never NaN in fixed point) to false, Where on a constant to its branch",
        run: |g, part, _| Ok(changed(super::guards::fold_guards(g, part))),
    },
    Stage {
        name: "divisions_to_products",
        about: "a/b as a·(1/b) where b is secret",
        run: |g, part, _| Ok(changed(fold::divisions_to_products(g, part).map_err(fold_err(g))?)),
    },
    Stage {
        name: "expand_secret_ops",
        about: "on secret data: x^k (public integer k ≤ 8) as products, Clip as max/min, |x| by ReLU, Where on a one-party condition as arithmetic",
        run: |g, part, _| Ok(changed(super::secret_ops::expand_secret_ops(g, part).map_err(fold_err(g))?)),
    },
    Stage {
        name: "lower_nonlinear",
        about: "nonlinear operators on secret data to stdlib approximations",
        run: |g, part, s| {
            let mut nl = s.opts.nonlinear.clone();
            nl.key_len = s.opts.token_len;
            let (approximations, clamped) = lower_nonlinear(g, part, &nl)
                .map_err(|error| CompileError::Nonlinear { model: g.name.clone(), error })?;
            s.approximations = approximations;
            s.clamped = clamped;
            Ok(Changed::Yes)
        },
    },
    Stage {
        name: "fold_norm_affine",
        about: "(n·γ + β)·W as n·(γ⊙W) + β·W for a layer norm's weights γ, β read by a weight product W",
        run: |g, part, _| Ok(changed(super::norm_affine::fold_norm_affine(g, part).map_err(fold_err(g))?)),
    },
    Stage {
        name: "fold_public",
        about: "what the server computes from its weights and public data alone, folded",
        run: |g, part, s| {
            s.weight_sources = fold::fold_public(g, part).map_err(fold_err(g))?;
            Ok(Changed::Yes)
        },
    },
];

/// Runs [`BACK`] on `g`; returns the state with the final partition.
pub fn run_back<'a>(
    g: &mut Graph,
    weight_vis: &'a dyn Fn(&str) -> Vis,
    opts: &'a CompileOptions,
) -> Result<(State<'a>, Partition), CompileError> {
    let mut s = State {
        weight_vis,
        opts,
        approximations: Vec::new(),
        clamped: Vec::new(),
        weight_sources: WeightSources::default(),
    };
    // The partition is an analysis of the graph: computed when a stage needs it and none is
    // held, kept while stages leave the graph unchanged.
    let mut partition: Option<Partition> = None;
    for stage in BACK {
        let part = partition.get_or_insert_with(|| analyze(g, weight_vis));
        if (stage.run)(g, part, &mut s)? == Changed::Yes {
            partition = None;
            if cfg!(debug_assertions) {
                crate::ir::verify(g).map_err(|errors| CompileError::Stage {
                    model: g.name.clone(),
                    stage: stage.name,
                    errors,
                })?;
            }
        }
        opts.observer.notify(stage.name, g);
    }
    let part = partition.unwrap_or_else(|| analyze(g, weight_vis));
    Ok((s, part))
}

/// Who hears each stage's graph (`--dump-after`); nobody by default.
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<Notify>>);

/// What an observer is called with: the stage's name and the graph it left.
type Notify = dyn Fn(&str, &Graph) + Send + Sync;

impl Observer {
    /// An observer calling `f(stage, graph)` after every stage.
    pub fn new(f: impl Fn(&str, &Graph) + Send + Sync + 'static) -> Observer {
        Observer(Some(Arc::new(f)))
    }

    /// Tells the observer, if any, that `stage` left `g`.
    pub fn notify(&self, stage: &str, g: &Graph) {
        if let Some(f) = &self.0 {
            f(stage, g)
        }
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Observer(set)" } else { "Observer(none)" })
    }
}
