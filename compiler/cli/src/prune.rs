//! Token pruning at the command line: the model at any sequence length, the thresholds file,
//! and the per-layer report (CipherPrune's table: tokens, softmax and GELU bytes per layer,
//! with and without pruning) with its plot.

use crate::model::Loaded;
use crate::report::bytes;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use veil_compiler::ir::{Graph, Tensor};
use veil_compiler::prune::PruneConfig;
use veil_compiler::recipe::Recipe;
use veil_isa::cost::{program_cost, program_cost_at, Cost};
use veil_isa::{Program, Tag};

/// The sequence length of a loaded model, refusing a model whose length is fixed.
pub fn max_len(file: &Path, m: &Loaded) -> Result<usize> {
    m.seq.with_context(|| {
        format!(
            "{}: token pruning needs a model whose sequence length can be chosen: a DSL model with \
             `const S = …`, or an ONNX export with a dynamic sequence axis and --seq N",
            file.display()
        )
    })
}

/// Thresholds keeping the fractions `keep` (one per attention layer, or one for all) of the
/// tokens on the samples `samples` draws for the model, leading `protect` tokens kept; returns
/// them with each sample's token counts after every pruning point.
pub fn calibrate(
    recipe: &Recipe,
    keep: &[f64],
    protect: usize,
    samples: impl FnOnce(&Graph) -> Result<Vec<HashMap<String, Tensor>>>,
) -> Result<veil_compiler::prune::calibrate::Calibrated> {
    if protect == 0 {
        bail!("--protect must be at least 1, so that a pruned sequence is never empty");
    }
    let file = &recipe.model.file;
    let lengths = recipe.lengths();
    let mut m = lengths.load()?;
    let n = max_len(file, &m)?;
    recipe.rewrite(&mut m.graph)?;
    let samples = samples(&m.graph)?;
    lengths.keep(n, m.graph);
    let graph_at = lengths.graph_at();
    let cuts = veil_compiler::compile::pruned::every_cut(&graph_at, n)
        .with_context(|| file.display().to_string())?;
    if keep.len() > 1 && keep.len() != cuts.len() {
        bail!(
            "--prune-keep lists {} fractions, the model has {} attention layers (give one, or one per layer)",
            keep.len(),
            cuts.len()
        );
    }
    let c =
        veil_compiler::prune::calibrate::thresholds(&graph_at, n, &cuts, keep, protect, &samples)?;
    if c.config.theta.iter().all(|t| t.is_none()) {
        bail!("--prune-keep keeps every token at every layer: there is no pruning point to write");
    }
    Ok(c)
}

/// Reads a thresholds file.
pub fn read_config(path: &Path) -> Result<PruneConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PruneConfig::from_json(&text).with_context(|| path.display().to_string())
}

/// The pruning points' layers, tokens and per-layer bytes of a run that set `lengths`.
pub struct Report {
    rows: Vec<Row>,
    /// Online bytes and rounds of the whole body, unpruned and pruned.
    totals: (Cost, Cost),
    /// The client's time in the pruning protocol over every point: deciding which tokens
    /// stay (scores, comparisons: tag `prune`) and compacting them (tag `compact`).
    phases: Option<(Duration, Duration)>,
}

struct Row {
    layer: String,
    tokens: Option<usize>,
    softmax: (u64, u64),
    gelu: (u64, u64),
    all: (u64, u64),
    rounds: u64,
    /// The client's time in this layer (local compute and waits), when measured.
    time: Option<Duration>,
}

/// Per layer: tokens entering it, softmax/GELU/all bytes without and with pruning.
pub fn report(p: &Program, lengths: &[u32]) -> Result<Report> {
    let full = program_cost(p);
    let pruned = program_cost_at(p, lengths).map_err(anyhow::Error::msg)?;
    let cfg: PruneConfig = p
        .meta("prune")
        .map(PruneConfig::from_json)
        .transpose()?
        .context("the program has no pruning points")?;
    let max = p.dynamic.as_ref().map_or(0, |d| d.max_len) as usize;
    let mut by: BTreeMap<(u32, String), Row> = BTreeMap::new();
    for (which, pc) in [(0, &full), (1, &pruned)] {
        for (tag, c) in &pc.by_tag {
            let n = tag.layer.strip_prefix("layer").and_then(|d| d.parse::<u32>().ok());
            let key = (n.map_or(u32::MAX, |x| x), tag.layer.clone());
            let row = by.entry(key).or_insert_with(|| Row {
                layer: tag.layer.clone(),
                tokens: None,
                softmax: (0, 0),
                gelu: (0, 0),
                all: (0, 0),
                rounds: 0,
                time: None,
            });
            let set = |t: &mut (u64, u64)| {
                if which == 0 {
                    t.0 += c.online()
                } else {
                    t.1 += c.online()
                }
            };
            match tag.op.as_str() {
                "softmax" => set(&mut row.softmax),
                "gelu" => set(&mut row.gelu),
                _ => {}
            }
            set(&mut row.all);
            if which == 1 {
                row.rounds += c.rounds;
            }
        }
    }
    // Tokens entering layer i: the length set by the last point of an earlier layer.
    let points: Vec<usize> = (0..cfg.theta.len()).filter(|&i| cfg.theta[i].is_some()).collect();
    for ((n, _), row) in by.iter_mut() {
        if *n == u32::MAX {
            continue;
        }
        let done = points.iter().filter(|&&l| l < *n as usize).count();
        row.tokens = Some(match (done, lengths.last()) {
            (0, _) | (_, None) => max,
            (d, Some(_)) => lengths[(d - 1).min(lengths.len() - 1)] as usize,
        });
    }
    Ok(Report { rows: by.into_values().collect(), totals: (full.body, pruned.body), phases: None })
}

impl Report {
    /// Adds the client's measured time per layer and per pruning phase (`time_by_tag` of its
    /// report).
    pub fn with_times(mut self, by_tag: &BTreeMap<Tag, Duration>) -> Self {
        let (mut keep, mut compact) = (Duration::ZERO, Duration::ZERO);
        for (tag, &t) in by_tag {
            if let Some(r) = self.rows.iter_mut().find(|r| r.layer == tag.layer) {
                *r.time.get_or_insert(Duration::ZERO) += t;
            }
            match tag.op.as_str() {
                "prune" => keep += t,
                "compact" => compact += t,
                _ => {}
            }
        }
        self.phases = Some((keep, compact));
        self
    }

    /// Online bytes and rounds of the pruned run's body.
    pub fn pruned_body(&self) -> &Cost {
        &self.totals.1
    }

    /// The table.
    pub fn text(&self) -> String {
        let mut s = String::from(
            "token pruning, per layer (bytes online, both directions, unpruned → pruned; rounds, the same either way):\n",
        );
        s.push_str(&format!(
            "  {:<8} {:>6}  {:>21}  {:>21}  {:>21}  {:>6}  {:>7}\n",
            "layer", "tokens", "softmax", "GELU", "all", "rounds", "time"
        ));
        let pair = |(a, b): (u64, u64)| format!("{} → {}", bytes(a), bytes(b));
        for r in &self.rows {
            let t = r.tokens.map_or("-".to_string(), |t| t.to_string());
            s.push_str(&format!(
                "  {:<8} {:>6}  {:>21}  {:>21}  {:>21}  {:>6}  {:>7}\n",
                r.layer,
                t,
                pair(r.softmax),
                pair(r.gelu),
                pair(r.all),
                r.rounds,
                r.time.map_or(String::new(), |d| format!("{}ms", d.as_millis()))
            ));
        }
        let (a, b) = self.totals;
        s.push_str(&format!(
            "  whole model: {} → {} ({:.2}× fewer bytes), rounds {} → {}\n",
            bytes(a.online()),
            bytes(b.online()),
            a.online() as f64 / b.online().max(1) as f64,
            a.rounds,
            b.rounds
        ));
        if let Some((keep, compact)) = self.phases {
            s.push_str(&format!(
                "  pruning protocol, every point (client time): keep decisions (scores, comparisons) {}ms, compaction {}ms\n",
                keep.as_millis(),
                compact.as_millis()
            ));
        }
        s
    }

    /// The plot: per layer, softmax, GELU and the rest, unpruned and pruned.
    pub fn svg(&self) -> String {
        let keys = vec!["softmax".to_string(), "GELU".to_string(), "other".to_string()];
        let mut rows = Vec::new();
        for r in &self.rows {
            for (label, pick) in [("", 0), (" pruned", 1)] {
                let get = |t: (u64, u64)| if pick == 0 { t.0 } else { t.1 } as f64;
                let (sm, ge, all) = (get(r.softmax), get(r.gelu), get(r.all));
                let tokens = match (pick, r.tokens) {
                    (1, Some(t)) => format!(" ({t} tokens)"),
                    _ => String::new(),
                };
                rows.push((
                    format!("{}{label}{tokens}", r.layer),
                    vec![sm, ge, (all - sm - ge).max(0.0)],
                ));
            }
        }
        crate::svg::stacked_bars(
            "online bytes per layer, unpruned and pruned",
            &keys,
            &rows,
            1e6,
            "MB",
        )
    }
}
