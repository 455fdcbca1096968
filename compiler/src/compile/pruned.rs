//! Compiling a model with pruning points into one program whose sequence length is chosen at
//! run time.
//!
//! The model is imported at its maximum length `n` and at a few shorter ones; pruning points
//! are inserted at the same places in each; each is lowered to SSA bytecode with the
//! length-dependent parts kept in the same shape (padded maxima, the softmax reciprocal's range
//! at `n`); [`veil_isa::template::from_probes`] then checks that the programs differ only in sizes,
//! fits each size as a polynomial of the length, and returns the program at `n` with those
//! polynomials. A model whose lowering depends on the length otherwise is refused, naming the
//! instruction.

use super::{assemble, prepare, CompileError, CompileOptions, Compiled};
use crate::backend::partition::Vis;
use crate::prune::cuts::{find, Cut};
use crate::prune::insert::insert;
use crate::prune::reference::{graph_at_len, GraphAt};
use crate::prune::{PruneConfig, PruneError};

/// The lengths compiled besides `n`: three fit each size, the others check the fit.
pub fn probe_lengths(n: usize) -> Vec<usize> {
    let n = n.max(4);
    let mut v = vec![n, n - 1, n - 2, n - 3, (n / 2).max(2)];
    v.dedup();
    v
}

/// The pruning points of the model at length `n` for the layers `cfg` has thresholds for.
pub fn cuts(graph_at: &GraphAt<'_>, n: usize, cfg: &PruneConfig) -> Result<Vec<Cut>, PruneError> {
    let layers: Vec<usize> =
        cfg.theta.iter().enumerate().filter(|(_, t)| t.is_some()).map(|(i, _)| i).collect();
    points(graph_at, n, Some(&layers))
}

/// A pruning point after every attention layer of the model at length `n`.
pub fn every_cut(graph_at: &GraphAt<'_>, n: usize) -> Result<Vec<Cut>, PruneError> {
    points(graph_at, n, None)
}

fn points(
    graph_at: &GraphAt<'_>,
    n: usize,
    layers: Option<&[usize]>,
) -> Result<Vec<Cut>, PruneError> {
    if n < 8 {
        return Err(PruneError::TooShort(n));
    }
    find(&graph_at_len(graph_at, n)?, &graph_at_len(graph_at, n - 1)?, n, layers)
}

/// Compiles the model at length `n` with the pruning points of `cfg`; `on_probe` is told each
/// length as it is compiled (for progress).
pub fn compile_pruned(
    graph_at: &GraphAt<'_>,
    n: usize,
    cfg: &PruneConfig,
    weight_vis: &dyn Fn(&str) -> Vis,
    opts: &CompileOptions,
    on_probe: &mut dyn FnMut(usize),
) -> Result<Compiled, CompileError> {
    let full = graph_at_len(graph_at, n)
        .map_err(|error| CompileError::Pruning { model: "(not loaded)".into(), error })?;
    let fail = |error: PruneError| CompileError::Pruning { model: full.name.clone(), error };
    let cuts = cuts(graph_at, n, cfg).map_err(fail)?;
    let mut main = None;
    let mut probes = Vec::new();
    for len in probe_lengths(n) {
        on_probe(len);
        let mut g =
            if len == n { full.clone() } else { graph_at_len(graph_at, len).map_err(fail)? };
        crate::prune::cuts::same_structure(&full, &g).map_err(fail)?;
        insert(&mut g, &cuts, cfg).map_err(fail)?;
        let mut o = opts.clone();
        o.token_len = Some((len, n));
        if len == n {
            o.meta.push(("prune".into(), cfg.to_json()));
        }
        let mut p = prepare(g, weight_vis, &o)?;
        // A point in layers the client runs in the clear (public weights) would change the
        // length of the program's input: only points under MPC.
        for &nd in &p.g.order {
            let node = &p.g.nodes[nd];
            if matches!(node.op, crate::ir::Op::PruneKeep { .. })
                && p.part.vis[node.result] != Vis::Shared
            {
                return Err(fail(PruneError::ClientSide { node: node.name.clone() }));
            }
        }
        probes.push((len as u32, p.take_builder().finish_ssa()));
        if len == n {
            main = Some(p);
        }
    }
    let program = veil_isa::template::from_probes(probes, n as u32)
        .map_err(|e| fail(PruneError::Template(e)))?;
    // The fit was checked at the probe lengths; the runs go down to a single token.
    let d = program.dynamic.as_ref().expect("a template has a dynamic section");
    for m in [1, 2, 3, n / 4] {
        let m = (m as u32).clamp(1, n as u32);
        let inst = d
            .instantiate(&program, m)
            .map_err(|error| fail(PruneError::Instantiate { len: m, error }))?;
        veil_isa::validate_instance(&inst)
            .map_err(|error| fail(PruneError::Instance { len: m, error }))?;
    }
    assemble(main.expect("the first probe is n"), program)
}
