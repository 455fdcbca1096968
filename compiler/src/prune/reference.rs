//! The plaintext pruned run: the model evaluated node by node; at each pruning point the rule
//! picks tokens, the crossing values keep those rows, and evaluation goes on with the model
//! imported at the new length. This is what the two-party run must reproduce.

use super::cuts::Cut;
use crate::eval::eval_op;
use crate::ir::{Graph, Tensor, Value, ValueDef};
use std::collections::HashMap;
use std::sync::Arc;

/// The model at a sequence length (imported or instantiated again).
pub type GraphAt<'a> = dyn Fn(usize) -> Result<Graph, String> + 'a;

/// One evaluation in progress.
pub struct Stepper<'a> {
    graph_at: &'a GraphAt<'a>,
    graphs: HashMap<usize, Arc<Graph>>,
    g: Arc<Graph>,
    env: HashMap<Value, Tensor>,
    pos: usize,
    /// Sequence length after each pruning point applied so far.
    pub lengths: Vec<usize>,
    /// Per point: the mean attention each token received.
    pub scores: Vec<Vec<f64>>,
}

impl<'a> Stepper<'a> {
    /// Starts at length `n` with the model's inputs (by name).
    pub fn new(
        graph_at: &'a GraphAt<'a>,
        n: usize,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Stepper<'a>, String> {
        let g = Arc::new(graph_at(n)?);
        let mut env = HashMap::new();
        for &i in &g.inputs {
            let name = &g.values[i].name;
            let t = inputs.get(name).ok_or_else(|| format!("input `{name}` not supplied"))?;
            env.insert(i, t.clone());
        }
        let graphs = HashMap::from([(n, g.clone())]);
        Ok(Stepper { graph_at, graphs, g, env, pos: 0, lengths: Vec::new(), scores: Vec::new() })
    }

    fn arg(&self, v: Value) -> Result<&Tensor, String> {
        match &self.g.values[v].def {
            ValueDef::Const(t) | ValueDef::Weight(t) => Ok(t.as_ref()),
            _ => self
                .env
                .get(&v)
                .ok_or_else(|| format!("`{}` is not available", self.g.values[v].name)),
        }
    }

    /// Evaluates the nodes before position `at`.
    pub fn advance_to(&mut self, at: usize) -> Result<(), String> {
        while self.pos < at.min(self.g.order.len()) {
            let nd = &self.g.nodes[self.g.order[self.pos]];
            let args = nd.args.iter().map(|&a| self.arg(a)).collect::<Result<Vec<_>, _>>()?;
            let out = eval_op(&nd.op, &args, &self.g.values[nd.result].ty)
                .map_err(|e| format!("{}: {e}", nd.name))?;
            self.env.insert(nd.result, out);
            self.pos += 1;
        }
        Ok(())
    }

    /// The mean attention received per token at `cut` (evaluating up to it).
    pub fn scores_at(&mut self, cut: &Cut) -> Result<Vec<f64>, String> {
        self.advance_to(cut.at)?;
        let p = self.arg(cut.probs)?;
        Ok(super::scores(&crate::eval::elementwise::f64s(p), &p.shape, cut.key_axis))
    }

    /// Applies the pruning point with threshold `theta`: returns which tokens stay.
    pub fn apply(&mut self, cut: &Cut, theta: f64, protect: usize) -> Result<Vec<bool>, String> {
        let s = self.scores_at(cut)?;
        let keep: Vec<bool> =
            s.iter().enumerate().map(|(j, &m)| j < protect || m >= theta).collect();
        let k = keep.iter().filter(|&&x| x).count();
        for &(v, axis) in &cut.crossing {
            let t = super::compact(self.arg(v)?, axis, &keep, false);
            self.env.insert(v, t);
        }
        if !self.graphs.contains_key(&k) {
            let g = Arc::new((self.graph_at)(k)?);
            super::cuts::same_structure(&self.g, &g)?;
            self.graphs.insert(k, g);
        }
        self.g = self.graphs[&k].clone();
        self.lengths.push(k);
        self.scores.push(s);
        Ok(keep)
    }

    /// Evaluates to the end and returns the outputs.
    pub fn finish(mut self) -> Result<Vec<Tensor>, String> {
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

/// Runs the model at length `n` with pruning points `cuts` and their thresholds.
pub fn run(
    graph_at: &GraphAt<'_>,
    n: usize,
    cuts: &[Cut],
    cfg: &super::PruneConfig,
    inputs: &HashMap<String, Tensor>,
) -> Result<PrunedRun, String> {
    let mut s = Stepper::new(graph_at, n, inputs)?;
    let mut margin = f64::INFINITY;
    for c in cuts {
        let theta = cfg.theta(c.layer).ok_or("a cut without a threshold")?;
        s.apply(c, theta, cfg.protect)?;
        let sc = s.scores.last().expect("apply records scores");
        for &m in &sc[cfg.protect.min(sc.len())..] {
            margin = margin.min((m - theta).abs());
        }
    }
    let lengths = s.lengths.clone();
    Ok(PrunedRun { outputs: s.finish()?, lengths, margin })
}
