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

/// What the stages share: the inputs of the compile, the cached partition, and what stages
/// leave for the lowering and the report.
pub struct State<'a> {
    /// Who may see each weight, by name.
    pub weight_vis: &'a dyn Fn(&str) -> Vis,
    /// The compile options.
    pub opts: &'a CompileOptions,
    partition: Option<Partition>,
    /// Every nonlinear replacement made.
    pub approximations: Vec<Approximation>,
    /// Constants clamped (huge negative masks).
    pub clamped: Vec<String>,
    /// Where the server's derived program weights come from (public folding).
    pub weight_sources: WeightSources,
}

impl State<'_> {
    /// The partition of `g`, taken out of the cache (computed if a stage changed `g` since);
    /// a stage hands it back with [`State::restore`] while it still describes the graph.
    pub fn take_partition(&mut self, g: &Graph) -> Partition {
        let vis = self.weight_vis;
        self.partition.take().unwrap_or_else(|| analyze(g, vis))
    }

    /// Puts the partition back into the cache (the driver drops it after a stage that
    /// changed the graph).
    pub fn restore(&mut self, part: Partition) {
        self.partition = Some(part);
    }
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
    pub run: fn(&mut Graph, &mut State) -> Result<Changed, CompileError>,
}

fn fold_err(g: &Graph) -> impl Fn(fold::FoldError) -> CompileError + '_ {
    move |error| CompileError::Fold { model: g.name.clone(), error }
}

/// The back half, in order. Adding a stage: a function of this signature in the module that
/// owns the transformation, and a line here.
pub const BACK: &[Stage] = &[
    Stage {
        name: "assign_layers",
        about: "each node's layer recorded in its provenance (cost reports, calibration keys)",
        run: |g, _| {
            layers::assign_layers(g);
            Ok(Changed::No)
        },
    },
    Stage {
        name: "fold_guards",
        about: "IsNaN of secret data (never NaN in fixed point) to false, Where on a constant to its branch",
        run: |g, s| {
            let part = s.take_partition(g);
            let n = super::guards::fold_guards(g, &part);
            if n == 0 {
                s.restore(part);
                return Ok(Changed::No);
            }
            Ok(Changed::Yes)
        },
    },
    Stage {
        name: "divisions_to_products",
        about: "a/b as a·(1/b) where b is secret",
        run: |g, s| {
            let part = s.take_partition(g);
            let n = fold::divisions_to_products(g, &part).map_err(fold_err(g))?;
            s.restore(part);
            Ok(if n > 0 { Changed::Yes } else { Changed::No })
        },
    },
    Stage {
        name: "lower_nonlinear",
        about: "nonlinear operators on secret data to stdlib approximations",
        run: |g, s| {
            let part = s.take_partition(g);
            let mut nl = s.opts.nonlinear.clone();
            nl.key_len = s.opts.token_len;
            let (approximations, clamped) = lower_nonlinear(g, &part, &nl)
                .map_err(|error| CompileError::Nonlinear { model: g.name.clone(), error })?;
            s.approximations = approximations;
            s.clamped = clamped;
            Ok(Changed::Yes)
        },
    },
    Stage {
        name: "fold_public",
        about: "what the server computes from its weights and public data alone, folded",
        run: |g, s| {
            let part = s.take_partition(g);
            s.weight_sources = fold::fold_public(g, &part).map_err(fold_err(g))?;
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
        partition: None,
        approximations: Vec::new(),
        clamped: Vec::new(),
        weight_sources: WeightSources::default(),
    };
    for stage in BACK {
        if (stage.run)(g, &mut s)? == Changed::Yes {
            s.partition = None;
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
    let part = s.take_partition(g);
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
