//! What a two-party run prints: the outputs (and .npy files), their error against the
//! plaintext reference, and the measured cost report.

use crate::party::ServerSummary;
use crate::report::{bytes, cost_report, Net};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use veil_compiler::ir::Tensor;
use veil_compiler::recipe::Recipe;
use veil_isa::Program;
use veil_vm::PartyReport;

/// Everything measured in one run.
pub struct Measured {
    /// The client's report.
    pub client: PartyReport,
    /// The server's figures, when known.
    pub server: Option<ServerSummary>,
    /// Dealer bytes (to the server).
    pub dealer_bytes: u64,
    /// Offline time (dealer material), when known.
    pub offline: Duration,
    /// Wall time of the client's whole session (connecting, the setup, waiting for material,
    /// the online phase).
    pub session: Duration,
    /// The client's plaintext part before the session (a public frozen prefix, one-hots).
    pub prefix: Duration,
    /// Peak RSS of the client process.
    pub client_rss: u64,
    /// Peak RSS of the dealer process, when it ran as one (not in-process).
    pub dealer_rss: Option<u64>,
}

/// Max abs error and max |reference| over all elements.
pub fn max_err(got: &Tensor, want: &Tensor) -> (f64, f64) {
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let m = w.iter().fold(0f64, |m, v| m.max(v.abs()));
    let e = g.iter().zip(&w).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    (e, m)
}

/// The plaintext reference from the model the program was compiled from, when it is here:
/// the program's recipe carried out on the model file (or on `override_path`), so that it is
/// the graph that was compiled, before lowering.
pub fn reference(
    p: &Program,
    override_path: Option<&Path>,
    inputs: &HashMap<String, Tensor>,
) -> Result<Option<Vec<Tensor>>> {
    Ok(reference_run(p, override_path, inputs)?.map(|r| r.outputs))
}

/// What the plaintext reference gives: its outputs and, for a pruned program, the token
/// count its pruned run kept after each pruning point.
pub struct Reference {
    /// The outputs, in the program's order.
    pub outputs: Vec<Tensor>,
    /// The plaintext pruned run's counts (None: not a pruned program).
    pub counts: Option<Vec<usize>>,
}

/// [`reference`], with the plaintext pruned run's counts.
pub fn reference_run(
    p: &Program,
    override_path: Option<&Path>,
    inputs: &HashMap<String, Tensor>,
) -> Result<Option<Reference>> {
    let Some(mut recipe) = Recipe::of_program(p)? else { return Ok(None) };
    match override_path {
        Some(f) => recipe.model.file = f.to_path_buf(),
        None if !recipe.model.file.exists() => return Ok(None),
        None => {}
    }
    if let Some(run) = pruned_reference(&recipe, inputs)? {
        return Ok(Some(Reference { outputs: run.outputs, counts: Some(run.lengths) }));
    }
    let g = recipe.reference()?;
    let outs = veil_compiler::eval::run(&g, inputs)
        .with_context(|| format!("the plaintext reference ({})", recipe.model.file.display()))?;
    Ok(Some(Reference { outputs: outs, counts: None }))
}

/// Where a two-party run's revealed token counts differ from the plaintext pruned run's: the
/// first pruning point (1-based) and the two counts, or None when they agree.
pub fn count_mismatch(plain: &[usize], mpc: &[u32]) -> Option<(usize, usize, u32)> {
    let n = plain.len().max(mpc.len());
    (0..n).find_map(|i| match (plain.get(i), mpc.get(i)) {
        (Some(&a), Some(&b)) if a == b as usize => None,
        (a, b) => Some((i + 1, a.copied().unwrap_or(0), b.copied().unwrap_or(0))),
    })
}

/// Warns when the two-party run pruned other tokens than the plaintext pruned run: their
/// outputs are then not comparable, and the error printed above measures that, not the MPC.
pub fn warn_count_mismatch(plain: &[usize], mpc: &[u32]) {
    if let Some((point, a, b)) = count_mismatch(plain, mpc) {
        println!(
            "  warning: the two-party run kept {b} tokens at pruning point {point} where the \
             plaintext pruned run kept {a}: a token's score lies within the fixed-point error of \
             its threshold, so the two runs pruned different tokens and the error above compares \
             different computations (thresholds calibrated on inputs like these keep a margin \
             from their scores: veil calibrate --prune-keep … --inputs DIR)"
        );
    }
}

/// The plaintext pruned run of a recipe with `prune` (None for other recipes): the model at
/// every length the pruning rule reaches.
pub fn pruned_reference(
    recipe: &Recipe,
    inputs: &HashMap<String, Tensor>,
) -> Result<Option<veil_compiler::prune::reference::PrunedRun>> {
    let Some(cfg) = &recipe.prune else { return Ok(None) };
    let n = recipe.model.seq.context("a pruned program records its sequence length")?;
    let lengths = recipe.lengths();
    let graph_at = lengths.graph_at();
    let cuts = veil_compiler::compile::pruned::cuts(&graph_at, n, cfg)?;
    let run = veil_compiler::prune::reference::run(&graph_at, n, &cuts, cfg, inputs)
        .with_context(|| format!("the plaintext pruned run ({})", recipe.model.file.display()))?;
    println!(
        "plaintext pruned run: tokens {n} → {} (closest score to its threshold: {:.2e} away)",
        run.lengths.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" → "),
        run.margin
    );
    Ok(Some(run))
}

/// Writes each output to `dir/<output name>.npy`.
pub fn write_outputs(outs: &[(String, Tensor)], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, t) in outs {
        let path = dir.join(format!("{}.npy", crate::commands::eval::file_name(name)));
        veil_compiler::npy::write(&path, t)?;
    }
    Ok(())
}

/// Prints outputs, errors and writes `.npy` files to `out_dir`.
pub fn print_outputs(
    outs: &[(String, Tensor)],
    reference: Option<&[Tensor]>,
    out_dir: Option<&Path>,
) -> Result<()> {
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (i, (name, t)) in outs.iter().enumerate() {
        let v = t.to_f64_vec();
        let (mn, mx) =
            v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        println!("output `{name}`: {} min {mn:.6} max {mx:.6}", t.ty());
        if let Some(r) = reference.and_then(|r| r.get(i)) {
            let (e, m) = max_err(t, r);
            println!(
                "  vs plaintext reference: max abs error {e:.3e} ({:.2e} of max |y| = {m:.3})",
                e / m.max(1e-30)
            );
        }
        if let Some(dir) = out_dir {
            let path = dir.join(format!("{}.npy", crate::commands::eval::file_name(name)));
            veil_compiler::npy::write(&path, t)?;
            println!("  wrote {}", path.display());
        }
    }
    Ok(())
}

/// Prints the measured cost report; for a pruned program, returns its per-layer report (for
/// `--plot`), or the reason there is none.
pub fn print_cost(p: &Program, m: &Measured, nets: &[Net]) -> Option<Result<crate::prune::Report>> {
    let c = &m.client;
    println!("measured:");
    println!(
        "  client's plaintext part (public prefix, input encoding): {:.2} s before the session",
        m.prefix.as_secs_f64()
    );
    println!(
        "  online: client sent {}, received {}; {} rounds; client wall time {:.2} s (waiting {:.2} s)",
        bytes(c.body.sent),
        bytes(c.body.received),
        c.body.rounds,
        c.body_time.as_secs_f64(),
        c.wait_time.as_secs_f64()
    );
    if !c.lengths.is_empty() {
        println!(
            "  length switches: {} `setlen`s took the client {:.2} s (planning fused kernels {:.2} s of it)",
            c.lengths.len(),
            c.setlen_time.as_secs_f64(),
            c.jit_instance_time.as_secs_f64()
        );
    }
    if let Some(s) = &m.server {
        println!(
            "  server: sent {}, received {}; wall time {:.2} s; dealer material {} in {:.2} s; peak RSS {}",
            bytes(s.sent),
            bytes(s.received),
            s.body_secs,
            bytes(s.dealer_bytes),
            s.offline_secs,
            bytes(s.peak_rss)
        );
    }
    println!(
        "  offline (dealer→server corrections, made before the query): {} in {:.2} s; client session {:.2} s in all; client peak RSS {}{}",
        bytes(m.dealer_bytes),
        m.offline.as_secs_f64(),
        m.session.as_secs_f64(),
        bytes(m.client_rss),
        m.dealer_rss.map_or(String::new(), |r| format!("; dealer peak RSS {}", bytes(r)))
    );
    println!(
        "  memory: client buffers peaked at {} (declared {}){}",
        bytes(c.peak_memory),
        bytes(c.declared_memory),
        match &m.server {
            Some(s) => format!(
                "; server session buffers at {} (declared {} with its weights, which its sessions share)",
                bytes(s.peak_memory),
                bytes(s.declared_memory),
            ),
            None => String::new(),
        }
    );
    let (body, report) = if p.dynamic.is_some() {
        println!(
            "  pruned: tokens {} → {} (the count after each pruning point, revealed to both parties)",
            p.dynamic.as_ref().map_or(0, |d| d.max_len),
            c.lengths.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" → ")
        );
        let report = crate::prune::report(p, &c.lengths).map(|r| r.with_times(&c.time_by_tag));
        let body = match &report {
            Ok(r) => {
                print!("{}", r.text());
                Some(*r.pruned_body())
            }
            Err(e) => {
                println!("  (no per-layer pruning table: {e:#})");
                None
            }
        };
        (body, Some(report))
    } else {
        print!("{}", cost_report(p, Some(&c.time_by_tag), &[]));
        (Some(veil_isa::cost::program_cost(p).body), None)
    };
    let compute = (c.body_time.saturating_sub(c.wait_time)).as_secs_f64();
    // Without the pruned run's cost (the reason is printed above) there is no estimate.
    let Some(body) = body else { return report };
    for &n in nets {
        println!(
            "estimate on {}: {:.2} s per inference ({:.2} s network + {:.2} s measured compute)",
            n.label(),
            n.seconds(&body) + compute,
            n.seconds(&body),
            compute
        );
    }
    report
}

#[cfg(test)]
mod count_tests {
    use super::count_mismatch;

    #[test]
    fn the_first_differing_pruning_point_is_named() {
        assert_eq!(count_mismatch(&[62, 48, 48], &[62, 48, 48]), None);
        assert_eq!(count_mismatch(&[62, 48, 48], &[62, 47, 47]), Some((2, 48, 47)));
        assert_eq!(count_mismatch(&[62, 48], &[62]), Some((2, 48, 0)));
    }
}
