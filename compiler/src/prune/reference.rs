//! The plaintext pruned run: the model evaluated node by node; at each pruning point the rule
//! picks tokens, the crossing values keep those rows, and evaluation goes on with the model
//! imported at the new length. This is what the two-party run must reproduce.

use super::cuts::Cut;
use super::PruneError;
use crate::eval;
use crate::ir::{Graph, Node, Tensor, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Why the model could not be had at a sequence length: the front end's or the recipe's
/// error, whichever loaded it.
pub type GraphError = Box<dyn std::error::Error + Send + Sync>;

/// The model at a sequence length (imported or instantiated again).
pub type GraphAt<'a> = dyn Fn(usize) -> Result<Graph, GraphError> + 'a;

/// The model at length `len` from `graph_at`, its error naming the length.
pub fn graph_at_len(graph_at: &GraphAt<'_>, len: usize) -> Result<Graph, PruneError> {
    graph_at(len).map_err(|error| PruneError::Load { len, error })
}

/// One evaluation in progress: the reference evaluator's steps ([`crate::eval`]), stopped at
/// the pruning points, where the crossing values keep the chosen rows and the evaluation goes
/// on with the model at the new length (same structure, so the same values and last uses).
pub struct Stepper<'a> {
    graph_at: &'a GraphAt<'a>,
    graphs: HashMap<usize, Arc<Graph>>,
    g: Arc<Graph>,
    env: HashMap<Value, Tensor>,
    last_use: HashMap<Value, usize>,
    /// Read after their last use as an argument: the points' attention probabilities and the
    /// outputs.
    keep: Vec<Value>,
    pos: usize,
    /// Sequence length after each pruning point applied so far.
    pub lengths: Vec<usize>,
    /// Per point: the mean attention each token received.
    pub scores: Vec<Vec<f64>>,
}

impl<'a> Stepper<'a> {
    /// Starts at length `n` with the model's inputs (by name), to stop at `cuts`.
    pub fn new(
        graph_at: &'a GraphAt<'a>,
        n: usize,
        cuts: &[Cut],
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Stepper<'a>, PruneError> {
        let g = Arc::new(graph_at_len(graph_at, n)?);
        let env = eval::input_env(&g, inputs)?;
        let last_use = eval::last_uses(&g);
        let keep = cuts.iter().map(|c| c.probs).chain(g.outputs.iter().copied()).collect();
        let graphs = HashMap::from([(n, g.clone())]);
        Ok(Stepper {
            graph_at,
            graphs,
            g,
            env,
            last_use,
            keep,
            pos: 0,
            lengths: Vec::new(),
            scores: Vec::new(),
        })
    }

    fn arg(&self, v: Value) -> Result<&Tensor, PruneError> {
        eval::arg(&self.g, &self.env, v)
            .ok_or_else(|| PruneError::Unavailable(self.g.values[v].name.clone()))
    }

    /// Evaluates the nodes before position `at`.
    pub fn advance_to(&mut self, at: usize) -> Result<(), PruneError> {
        self.advance_watching(at, &mut |_, _, _| {})
    }

    /// [`Stepper::advance_to`], showing `watch` each node with its arguments before it is
    /// evaluated (the graph is the model at the current length).
    pub fn advance_watching(&mut self, at: usize, watch: &mut Watch<'_>) -> Result<(), PruneError> {
        while self.pos < at.min(self.g.order.len()) {
            let nd = self.g.order[self.pos];
            let args: Vec<&Tensor> =
                self.g.nodes[nd].args.iter().map(|&a| self.arg(a)).collect::<Result<_, _>>()?;
            watch(&self.g, nd, &args);
            eval::step(&self.g, &mut self.env, self.pos, &self.last_use, &self.keep, false)?;
            self.pos += 1;
        }
        Ok(())
    }

    /// The mean attention received per token at `cut` (evaluating up to it).
    pub fn scores_at(&mut self, cut: &Cut) -> Result<Vec<f64>, PruneError> {
        self.scores_watching(cut, &mut |_, _, _| {})
    }

    fn scores_watching(
        &mut self,
        cut: &Cut,
        watch: &mut Watch<'_>,
    ) -> Result<Vec<f64>, PruneError> {
        self.advance_watching(cut.at, watch)?;
        let p = self.arg(cut.probs)?;
        Ok(super::scores(&p.to_f64_vec(), &p.shape, cut.key_axis))
    }

    /// Applies the pruning point with threshold `theta`: returns which tokens stay.
    pub fn apply(
        &mut self,
        cut: &Cut,
        theta: f64,
        protect: usize,
    ) -> Result<Vec<bool>, PruneError> {
        self.apply_watching(cut, theta, protect, &mut |_, _, _| {})
    }

    fn apply_watching(
        &mut self,
        cut: &Cut,
        theta: f64,
        protect: usize,
        watch: &mut Watch<'_>,
    ) -> Result<Vec<bool>, PruneError> {
        let s = self.scores_watching(cut, watch)?;
        let keep = super::keep_of(&s, theta, protect);
        let k = keep.iter().filter(|&&x| x).count();
        for &(v, axis) in &cut.crossing {
            let t = super::compact(self.arg(v)?, axis, &keep, false);
            self.env.insert(v, t);
        }
        // The probabilities were kept for this point only (unless they cross it themselves).
        if cut.crossing.iter().all(|&(v, _)| v != cut.probs) {
            self.env.remove(&cut.probs);
        }
        if !self.graphs.contains_key(&k) {
            let g = Arc::new(graph_at_len(self.graph_at, k)?);
            super::cuts::same_structure(&self.g, &g)?;
            self.graphs.insert(k, g);
        }
        self.g = self.graphs[&k].clone();
        self.lengths.push(k);
        self.scores.push(s);
        Ok(keep)
    }

    /// Evaluates to the end and returns the outputs.
    pub fn finish(mut self) -> Result<Vec<Tensor>, PruneError> {
        self.advance_to(usize::MAX)?;
        self.g.outputs.iter().map(|&o| self.arg(o).cloned()).collect()
    }
}

/// What a plaintext pruned run gives.
#[derive(Clone, Debug)]
pub struct PrunedRun {
    /// The model's outputs.
    pub outputs: Vec<Tensor>,
    /// Tokens after each pruning point.
    pub lengths: Vec<usize>,
    /// The smallest distance of a non-protected token's mean attention from its threshold:
    /// fixed-point errors below it cannot change which tokens stay.
    pub margin: f64,
}

/// Sees each node of a run with its arguments, before it is evaluated.
pub type Watch<'w> = dyn FnMut(&Graph, Node, &[&Tensor]) + 'w;

/// Runs the model at length `n` with pruning points `cuts` and their thresholds.
pub fn run(
    graph_at: &GraphAt<'_>,
    n: usize,
    cuts: &[Cut],
    cfg: &super::PruneConfig,
    inputs: &HashMap<String, Tensor>,
) -> Result<PrunedRun, PruneError> {
    run_watching(graph_at, n, cuts, cfg, inputs, &mut |_, _, _| {})
}

/// [`run`], showing `watch` every node evaluated (at whatever length it runs).
pub fn run_watching(
    graph_at: &GraphAt<'_>,
    n: usize,
    cuts: &[Cut],
    cfg: &super::PruneConfig,
    inputs: &HashMap<String, Tensor>,
    watch: &mut Watch<'_>,
) -> Result<PrunedRun, PruneError> {
    let mut s = Stepper::new(graph_at, n, cuts, inputs)?;
    let mut margin = f64::INFINITY;
    for c in cuts {
        let theta = cfg.theta(c.layer).ok_or(PruneError::CutWithoutThreshold { layer: c.layer })?;
        s.apply_watching(c, theta, cfg.protect, watch)?;
        let sc = s.scores.last().expect("apply records scores");
        for &m in &sc[cfg.protect.min(sc.len())..] {
            margin = margin.min((m - theta).abs());
        }
    }
    let lengths = s.lengths.clone();
    s.advance_watching(usize::MAX, watch)?;
    Ok(PrunedRun { outputs: s.finish()?, lengths, margin })
}
