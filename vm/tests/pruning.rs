//! Token pruning in the VM: a program compiled at several lengths becomes one dynamic program;
//! the pruned run keeps exactly the tokens the plaintext rule keeps, the dealer follows the
//! revealed lengths, and the measured cost is the prediction at those lengths.

mod common;
use common::*;
use veil_isa::builder::THETA_BITS;
use veil_isa::cost::program_cost_at;
use veil_isa::template::from_probes;
use veil_isa::{Buf, Party, Program};

const R: u32 = 3;

/// Scores `s` pick tokens (mean score ≥ θ, the first always kept); the kept rows of `x` (`n`
/// rows of `cols`) are compacted and the length set to their count: returns them.
fn pruned_rows(b: &mut veil_isa::builder::ProgramBuilder, n: u32, theta: f64, cols: u32) -> Buf {
    let x = b.input("x", Party::Client, &[n, cols], F);
    let s = b.input("s", Party::Client, &[n], F);
    let total = b.sum(s, 1, n, 1);
    let theta_g = (theta * (1u64 << THETA_BITS) as f64).round() as u64;
    let keep = b.prune_keep(s, total, theta_g, 1);
    let c = b.compaction(keep);
    let xc = b.compact_rows(&c, x, cols);
    b.set_len(c.count, 0);
    xc
}

/// [`pruned_rows`], then the sum of the squares of the kept rows per column.
fn toy_cols(n: u32, theta: f64, cols: u32) -> Program {
    let mut b = builder();
    let xc = pruned_rows(&mut b, n, theta, cols);
    let sq = b.mul(xc, 0, xc, 0, 1);
    let sq = b.trunc(sq, F);
    let y = b.sum(sq, 1, n, cols);
    b.output("y", y, Party::Client, &[cols], F);
    b.finish_ssa()
}

fn dynamic(max: u32, theta: f64) -> Program {
    dynamic_cols(max, theta, R)
}

fn dynamic_cols(max: u32, theta: f64, cols: u32) -> Program {
    let probes = [max, max - 1, max - 2, max - 3, 2].map(|n| (n, toy_cols(n, theta, cols)));
    let p = from_probes(probes.to_vec(), max).expect("the toy is polynomial in n");
    veil_isa::validate(&p).expect("valid");
    p
}

#[test]
fn pruned_run_keeps_what_the_rule_keeps_in_memory_and_over_tcp() {
    let n = 12u32;
    let theta = 1.0 / n as f64;
    let p = dynamic(n, theta);
    let mut rng = Rng(7);
    let xs = rng.vec((n * R) as usize, -3.0, 3.0);
    // Scores well away from the threshold: 0.5/n or 1.5/n of a unit total.
    let picks: Vec<bool> = (0..n).map(|j| j % 3 != 1).collect();
    let raw: Vec<f64> = picks.iter().map(|&k| if k { 1.5 } else { 0.5 }).collect();
    let sum: f64 = raw.iter().sum();
    let ss: Vec<f64> = raw.iter().map(|v| v / sum * 4.0).collect();
    let keep: Vec<bool> =
        (0..n as usize).map(|j| j == 0 || ss[j] / ss.iter().sum::<f64>() >= theta).collect();
    assert_ne!(keep, picks.iter().map(|_| true).collect::<Vec<_>>());
    let kept = keep.iter().filter(|&&k| k).count() as u32;
    for tcp in [false, true] {
        let r = run_at(&p, vec![("x", xs.clone()), ("s", ss.clone())], tcp, &[kept]);
        assert_eq!(r.client.lengths, vec![kept]);
        assert_eq!(r.server.lengths, vec![kept]);
        let y = out(&r, "y");
        for col in 0..R as usize {
            let want: f64 = (0..n as usize)
                .filter(|&j| keep[j])
                .map(|j| xs[j * R as usize + col].powi(2))
                .sum();
            assert!((y[col] - want).abs() < 1e-2, "column {col}: {} vs {want}", y[col]);
        }
    }
}

#[test]
fn keeping_everything_and_keeping_one_both_run() {
    let n = 9u32;
    let p = dynamic(n, 0.05);
    let xs: Vec<f64> = (0..n * R).map(|i| (i % 5) as f64 * 0.5).collect();
    // All equal: every mean is 1/9 ≥ 0.05: nothing pruned.
    let r = run_at(&p, vec![("x", xs.clone()), ("s", vec![1.0; n as usize])], false, &[n]);
    assert_eq!(r.client.lengths, vec![n]);
    // One huge score: only the protected first token (and that one) stay.
    let mut s = vec![0.01; n as usize];
    s[4] = 50.0;
    let r = run_at(&p, vec![("x", xs.clone()), ("s", s)], false, &[2]);
    assert_eq!(r.client.lengths, vec![2]);
    let y = out(&r, "y");
    for col in 0..R as usize {
        let want = xs[col].powi(2) + xs[4 * R as usize + col].powi(2);
        assert!((y[col] - want).abs() < 1e-2);
    }
}

#[test]
fn a_size_that_is_not_polynomial_is_refused_by_name() {
    let halves = |n: u32| {
        let mut b = builder();
        let x = b.input("x", Party::Client, &[n], F);
        let y = b.sum(x, 1, n.div_ceil(2), 2.min(n));
        let _ = y;
        b.output("x", x, Party::Client, &[n], F);
        b.finish_ssa()
    };
    let probes = [16, 15, 14, 13].map(|n| (n, halves(n)));
    let e = from_probes(probes.to_vec(), 16).unwrap_err();
    assert!(e.contains("not a polynomial") || e.contains("changes shape"), "{e}");
}

#[test]
fn pruned_instances_run_fused_kernels_bit_identical_to_the_interpreter() {
    use veil_vm::{run_session, PartyData, RunOptions, Values};
    // Wide rows, so that the instance after the `setlen` is worth planning
    // (`WORTH_PLANNING` elements per instruction); narrow ones stay interpreted.
    let (n, cols) = (12u32, 512u32);
    let p = dynamic_cols(n, 1.0 / n as f64, cols);
    let mut rng = Rng(11);
    let xs = rng.vec((n * cols) as usize, -3.0, 3.0);
    let ss: Vec<f64> = (0..n).map(|j| if j % 3 == 1 { 0.02 } else { 0.3 }).collect();
    let c = PartyData {
        inputs: vec![("x".into(), Values::F64(xs)), ("s".into(), Values::F64(ss))],
        weights: vec![],
    };
    let run = |jit: bool| {
        let opts = RunOptions { jit, seeds: Some([[4; 16], [9; 16]]), ..RunOptions::default() };
        run_session(&p, &c, &PartyData::default(), &opts).expect("session runs")
    };
    let (with, without) = (run(true), run(false));
    assert_eq!(with.client.lengths, vec![8]);
    assert_eq!(with.client.lengths, without.client.lengths);
    assert_eq!(with.outputs, without.outputs, "bit-identical outputs");
    assert_eq!(without.client.jit_kernels, 0);
    #[cfg(feature = "jit")]
    {
        // The kernels after the `setlen` (the square's truncation and the sum's operands) are
        // planned for the instance: more kernels than the loaded program's plan alone.
        let loaded = veil_vm::jit::Jit::new(&p, Party::Client, true).expect("jit").kernels;
        assert!(with.client.jit_kernels > loaded, "{} vs {loaded}", with.client.jit_kernels);
        // Their code was compiled with the loaded program (a broadcast's lengths are the
        // call's arguments): nothing compiles during the query.
        assert_eq!(with.client.jit_compiled_in_body, 0);
        assert_eq!(with.server.jit_compiled_in_body, 0);
    }
}

#[test]
fn an_input_over_token_pairs_read_after_a_setlen_is_refused() {
    // An `n × n` input read after the count is revealed would be read as a prefix of its
    // full-length layout: wrong rows. The template refuses it (it is never written in the
    // body, so it exists before the `setlen`).
    let pairs = |n: u32| {
        let mut b = builder();
        let s = b.input("s", Party::Client, &[n], F);
        let m = b.input("m", Party::Client, &[n, n], F);
        let total = b.sum(s, 1, n, 1);
        let keep = b.prune_keep(s, total, 1 << 20, 1);
        let c = b.compaction(keep);
        b.set_len(c.count, 0);
        let y = b.sum(m, 1, n * n, 1);
        b.output("y", y, Party::Client, &[1], F);
        b.finish_ssa()
    };
    let probes = [12, 11, 10, 9, 2].map(|n| (n, pairs(n)));
    let e = from_probes(probes.to_vec(), 12).unwrap_err();
    assert!(e.contains("not laid out token-first") && e.contains("loaded before"), "{e}");
}

/// Runs and checks the measured cost against the prediction at `lengths`.
fn run_at(
    p: &Program,
    client: Vec<(&str, Vec<f64>)>,
    tcp: bool,
    lengths: &[u32],
) -> veil_vm::RunResult {
    use veil_vm::{run_session, PartyData, RunOptions, Values};
    let c = PartyData {
        inputs: client.into_iter().map(|(n, v)| (n.to_string(), Values::F64(v))).collect(),
        weights: vec![],
    };
    let opts = RunOptions { tcp, ..RunOptions::default() };
    let r = run_session(p, &c, &PartyData::default(), &opts).expect("session runs");
    let pc = program_cost_at(p, lengths).expect("instantiates");
    assert_eq!(r.client.body.rounds, pc.body.rounds, "rounds");
    assert_eq!(r.client.body.sent, pc.body.sent[0], "client bytes");
    assert_eq!(r.server.body.sent, pc.body.sent[1], "server bytes");
    assert_eq!(r.dealer_bytes, pc.setup.dealer + pc.body.dealer + DEALER_OVERHEAD, "dealer bytes");
    r
}

#[test]
fn three_roles_over_tcp_follow_the_revealed_length() {
    three_roles(true);
    // `veil dealer --live`: nothing made ahead.
    three_roles(false);
}

fn three_roles(ahead: bool) {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use veil_vm::session::{deal, serve, ClientSession, DealerEvent, NetOptions, ServeControl};
    use veil_vm::Values;
    let n = 10u32;
    let prog = Arc::new(dynamic(n, 1.0 / n as f64));
    let timeout = std::time::Duration::from_secs(30);
    let opts = NetOptions { timeout, ahead, ..NetOptions::default() };
    let dl = TcpListener::bind("127.0.0.1:0").unwrap();
    let sl = TcpListener::bind("127.0.0.1:0").unwrap();
    let daddr = dl.local_addr().unwrap().to_string();
    let saddr = sl.local_addr().unwrap().to_string();
    let made = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let dealer = std::thread::spawn({
        let (p, o, m, stop) = (prog.clone(), opts.clone(), made.clone(), stop.clone());
        move || {
            deal(&dl, p, &o, None, &stop, move |e| match e {
                DealerEvent::Made { live, .. } => m.lock().unwrap().push(live),
                // What was made before each query (taken when the server asks).
                DealerEvent::Ahead { .. } => m.lock().unwrap().push(false),
                _ => {}
            })
        }
    });
    let control = Arc::new(ServeControl::default());
    let server = std::thread::spawn({
        let (p, o, da, ctl) = (prog.clone(), opts.clone(), daddr.clone(), control.clone());
        move || {
            serve(&sl, &p, vec![], &da, &o, Some(1), &ctl, |e| {
                if let veil_vm::session::ServerEvent::Session(r) = e {
                    assert!(r.is_ok(), "{:?}", r.err())
                }
            })
            .unwrap()
        }
    });
    let mut s = vec![0.1; n as usize];
    s[3] = 5.0;
    s[7] = 5.0;
    let xs: Vec<f64> = (0..n * R).map(|i| (i % 7) as f64 * 0.25).collect();
    let inputs =
        vec![("x".to_string(), Values::F64(xs.clone())), ("s".to_string(), Values::F64(s))];
    let mut c = ClientSession::connect(&prog, &saddr, &daddr, &opts).unwrap();
    // Two inferences in one session: each pruned run gets its own live material.
    for _ in 0..2 {
        let (out, _) = c.infer(&inputs).unwrap();
        for col in 0..R as usize {
            let want: f64 = [0usize, 3, 7].iter().map(|&j| xs[j * R as usize + col].powi(2)).sum();
            assert!((out[0].data[col] - want).abs() < 1e-2);
        }
    }
    let rep = c.close().unwrap();
    server.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    dealer.join().unwrap().unwrap();
    // Each query: its material made ahead, then the live rest (only the latter with `--live`).
    let want = if ahead { vec![false, true, false, true] } else { vec![true, true] };
    assert_eq!(*made.lock().unwrap(), want);
    assert_eq!(rep.report.lengths, vec![3, 3]);
}

#[test]
fn a_revealed_length_beyond_the_current_one_is_an_error_not_a_panic() {
    let bad = |n: u32| {
        let mut b = builder();
        let x = b.input("x", Party::Client, &[n, R], F);
        let zero = b.mul_imm(x, 0);
        let big = b.sum(zero, 1, n * R, 1);
        let big = b.add_imm(big, 1000);
        b.set_len(big, 0);
        let y = b.sum(x, 1, n, R);
        b.output("y", y, Party::Client, &[R], F);
        b.finish_ssa()
    };
    let probes = [8, 7, 6, 5, 4].map(|n| (n, bad(n)));
    let p = from_probes(probes.to_vec(), 8).unwrap();
    use veil_vm::{run_session, PartyData, RunOptions, Values};
    let c = PartyData {
        inputs: vec![("x".into(), Values::F64(vec![1.0; (8 * R) as usize]))],
        weights: vec![],
    };
    let e = run_session(&p, &c, &PartyData::default(), &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("revealed length 1000 outside 1..=8"), "{e}");
}

/// The body index of the program's `setlen`.
fn setlen_at(p: &Program) -> usize {
    p.body.iter().position(|i| matches!(i, veil_isa::Instr::SetLen { .. })).expect("a setlen")
}

#[test]
fn a_template_whose_sizes_are_wrong_at_its_own_length_is_refused_at_load() {
    // The VM checks instances one segment at a time, trusting load-time validation for the
    // rest: the polynomials must reproduce the loaded program's own sizes.
    let mut p = dynamic(12, 1.0 / 12.0);
    let d = p.dynamic.as_mut().unwrap();
    let f = d.fields.last_mut().unwrap();
    f.poly.0[0] += 1;
    let at = f.instr;
    let e = veil_isa::validate(&p).unwrap_err().to_string();
    assert!(e.contains("dynamic field") && e.contains(&format!("body #{at}")), "{e}");
    let mut p = dynamic(12, 1.0 / 12.0);
    let (b, poly) = p.dynamic.as_mut().unwrap().buffers.last_mut().unwrap();
    poly.0[1] += 1;
    let b = *b;
    let e = veil_isa::validate(&p).unwrap_err().to_string();
    assert!(e.contains(&format!("dynamic length of {b}")), "{e}");
}

#[test]
fn checking_the_segment_that_runs_agrees_with_checking_the_whole_instance() {
    use veil_isa::{validate_instance, Segments};
    let p = dynamic(12, 1.0 / 12.0);
    let from = setlen_at(&p) + 1;
    let d = p.dynamic.clone().unwrap();
    for n in 1..=12 {
        let q = d.instantiate(&p, n).unwrap();
        let mut s = Segments::at(&p, from);
        assert_eq!(s.check(&q, from).is_ok(), validate_instance(&q).is_ok(), "n = {n}");
        // The toy's only segment runs to the end of the body.
        assert_eq!(s.next(), p.body.len());
        // A segment must start where the checked state is.
        let e = Segments::at(&p, from).check(&q, from + 1).unwrap_err().to_string();
        assert!(e.contains(&format!("checked from body #{}", from + 1)), "{e}");
    }
}

#[test]
fn an_instance_wrong_at_a_shorter_length_is_refused_at_its_setlen_by_name() {
    use veil_isa::{validate_instance, Segments};
    let (max, n) = (12u32, 8u32);
    let p = dynamic(max, 1.0 / max as f64);
    let from = setlen_at(&p) + 1;
    // A size after the `setlen` bent so that it still holds at the loaded length (the
    // template validates) but not at `n`: the first such field whose instance is invalid.
    let d = p.dynamic.as_ref().unwrap();
    let bent = (0..d.fields.len())
        .filter(|&k| d.fields[k].instr as usize >= from)
        .map(|k| {
            let mut q = p.clone();
            let f = &mut q.dynamic.as_mut().unwrap().fields[k];
            f.poly.0[0] -= max as i64;
            f.poly.0[1] += 1;
            let at = f.instr as usize;
            (q, at)
        })
        .find(|(q, _)| {
            let d = q.dynamic.as_ref().unwrap();
            d.instantiate(q, n).is_ok_and(|i| validate_instance(&i).is_err())
        });
    let (q, at) = bent.expect("a size whose change breaks the instance");
    veil_isa::validate(&q).expect("the template holds at its own length");
    let inst = q.dynamic.as_ref().unwrap().instantiate(&q, n).unwrap();
    let e = Segments::at(&q, from).check(&inst, from).unwrap_err().to_string();
    assert!(e.contains(&format!("body #{at} `{}`", q.body[at].name())), "{e}");
    // The run stops at the `setlen` with the instruction named, in each role.
    use veil_vm::{run_session, PartyData, RunOptions, Values};
    let ss: Vec<f64> = (0..max).map(|j| if j % 3 == 1 { 0.02 } else { 0.3 }).collect();
    let c = PartyData {
        inputs: vec![
            ("x".into(), Values::F64(vec![1.0; (max * R) as usize])),
            ("s".into(), Values::F64(ss)),
        ],
        weights: vec![],
    };
    let e = run_session(&q, &c, &PartyData::default(), &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains(&format!("body #{at}")), "{e}");
}

#[test]
fn resizing_an_instance_in_place_is_instantiating_it_afresh() {
    // The VM and the dealer resize one copy of the program at each `setlen` instead of
    // cloning the program again.
    let p = dynamic(12, 1.0 / 12.0);
    let d = p.dynamic.clone().unwrap();
    let mut q = Program { dynamic: None, ..p.clone() };
    for n in [12, 11, 8, 8, 5, 2, 1] {
        d.resize(&p, &mut q, n).unwrap();
        assert_eq!(q, d.instantiate(&p, n).unwrap(), "n = {n}");
    }
    // Lengths only shrink: growing back is refused, naming the buffer.
    let e = d.resize(&p, &mut q, 2).unwrap_err();
    assert!(e.contains("would grow from") && e.contains("elements at length 2"), "{e}");
    // A program that is not an instance of `p` is refused, not indexed out of range.
    let mut other = Program::default();
    assert!(d.resize(&p, &mut other, 3).unwrap_err().contains("not of this program"));
}

/// The frames a dealer sends the server for one run of `p` whose client reveals `lengths`:
/// made live, or cut from material made ahead with `plan`.
fn dealt(
    p: &Program,
    lengths: &[u32],
    plan: Option<veil_vm::ahead::Plan>,
) -> Result<Vec<Vec<u8>>, veil_vm::VmError> {
    use std::sync::Arc;
    use veil_vm::ahead::Ahead;
    use veil_vm::dealer::{Base, Dealer};
    use veil_vm::net::local::dealer_channel;
    use veil_vm::net::{FrameSink, FrameSource};
    let seeds = [[3u8; 16], [4u8; 16]];
    let base = Arc::new(Base::new(p, [5; 16])?);
    let (sink, mut source) = dealer_channel();
    let (mut len_sink, len_source) = dealer_channel();
    for n in lengths {
        len_sink.send_frame((*n as u64).to_le_bytes().to_vec())?;
    }
    let mut d = match plan {
        Some(plan) => {
            let made = Ahead::make(p, base.clone(), seeds, Arc::new(plan))?;
            Dealer::with_ahead(p, base, made, Box::new(sink))?
        }
        None => Dealer::new(p, base, seeds, Box::new(sink)),
    };
    d.set_lengths(Box::new(len_source));
    d.deal_body()?;
    d.finish()?;
    let mut frames = Vec::new();
    loop {
        let f = source.recv_frame()?;
        if f.is_empty() {
            return Ok(frames);
        }
        frames.push(f);
    }
}

#[test]
fn material_made_ahead_and_cut_to_the_revealed_length_is_the_live_material_byte_for_byte() {
    use veil_vm::ahead::{Plan, Step};
    let n = 12u32;
    let p = dynamic(n, 1.0 / n as f64);
    let plan = Plan::new(&p);
    let count = |step: Step| {
        plan.steps.iter().zip(&p.body).filter(|(s, i)| **s == step && i.is_dealer()).count()
    };
    let (live, stored) = (count(Step::Live), count(Step::Stored));
    // Both kinds occur: the compaction's products over the token axis stay live.
    assert!(stored > 0 && live > 0, "{live} live, {stored} stored");
    for m in [n, n - 1, 5, 1] {
        let want = dealt(&p, &[m], None).unwrap();
        assert_eq!(dealt(&p, &[m], Some(plan.clone())).unwrap(), want, "length {m}");
    }
    // With a product over the token axis after the pruning point (the kept rows' Gram
    // matrix): the plan deals it live, and the material still matches.
    let probes = [n, n - 1, n - 2, n - 3, 2].map(|k| (k, toy_gram(k, 1.0 / n as f64)));
    let g = from_probes(probes.to_vec(), n).expect("polynomial");
    let plan = Plan::new(&g);
    let gram = (0..g.body.len())
        .rev()
        .find(|&k| matches!(g.body[k], veil_isa::Instr::DMatMul { .. }))
        .expect("the Gram product");
    assert_eq!(plan.steps[gram], Step::Live);
    let want = dealt(&g, &[5], None).unwrap();
    assert_eq!(dealt(&g, &[5], Some(plan.clone())).unwrap(), want);
    // Negative control: stored, its full-length product is not the product of the kept
    // rows, and the server would get wrong material.
    let mut wrong = plan;
    wrong.steps[gram] = Step::Stored;
    assert!(dealt(&g, &[5], Some(wrong)).map_or(true, |f| f != want));
}

/// [`pruned_rows`], then the Gram matrix of the kept rows (a product over the token axis).
fn toy_gram(n: u32, theta: f64) -> Program {
    let mut b = builder();
    let xc = pruned_rows(&mut b, n, theta, R);
    let xt = b.transpose(xc, &[n, R], &[1, 0]);
    let gram = b.matmul(xt, xc, 1, R, n, R);
    let gram = b.trunc(gram, F);
    b.output("g", gram, Party::Client, &[R, R], F);
    b.finish_ssa()
}
