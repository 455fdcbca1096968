//! A party's view is independent of the other party's secret: what the server receives has the
//! same distribution whether the client's input is A or B (and the same for the client's view
//! of the server's weights). A chi-square test of homogeneity on the bytes of every round, with
//! a negative control showing the test does catch an unmasked opening.

mod common;
use common::*;
use std::sync::{Arc, Mutex};
use veil_isa::builder::ProgramBuilder;
use veil_isa::{Instr, Kind, Party, Program};
use veil_vm::dealer::Dealer;
use veil_vm::material::Material;
use veil_vm::net::local::{dealer_channel, LocalTransport};
use veil_vm::net::{CommStats, Prefetched, Transport, TransportError};
use veil_vm::prg::Prg;
use veil_vm::{PartyVm, Values};

/// Records every message this end receives.
struct Recording {
    inner: LocalTransport,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Transport for Recording {
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let got = self.inner.exchange(msg)?;
        self.log.lock().unwrap().push(got.clone());
        Ok(got)
    }
    fn stats(&self) -> CommStats {
        self.inner.stats()
    }
}

/// Runs `prog` and returns (messages the client received, messages the server received).
fn transcripts(prog: &Program, x: Vec<f64>, w: Vec<f64>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let seeds = [Prg::random_seed(), Prg::random_seed()];
    let (sink, mut src) = dealer_channel();
    let setup_seed = veil_vm::run::setup_seed(seeds[1]);
    let base = Arc::new(veil_vm::dealer::Base::new(prog, setup_seed).unwrap());
    let mut d = Dealer::new(prog, base, seeds, Box::new(sink));
    d.deal_body().unwrap();
    d.finish().unwrap();
    let pre = Prefetched::drain(&mut src).unwrap();
    let (c, s) = LocalTransport::pair();
    let (cl, sl) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (cl2, sl2) = (cl.clone(), sl.clone());
    std::thread::scope(|sc| {
        sc.spawn(move || {
            let mut vm = PartyVm::new(
                prog,
                Party::Server,
                Material::new(Party::Server, setup_seed, None),
                Box::new(Recording { inner: s, log: sl2 }),
                1 << 30,
            )
            .unwrap();
            vm.load_weights(&[("w".into(), Values::F64(w))]).unwrap();
            vm.run_setup().unwrap();
            vm.set_material(Material::new(Party::Server, seeds[1], Some(Box::new(pre))));
            vm.run_body().unwrap();
        });
        let mut vm = PartyVm::new(
            prog,
            Party::Client,
            Material::none(Party::Client),
            Box::new(Recording { inner: c, log: cl2 }),
            1 << 30,
        )
        .unwrap();
        vm.run_setup().unwrap();
        vm.set_material(Material::new(Party::Client, seeds[0], None));
        vm.set_inputs(&[("x".into(), Values::F64(x))]).unwrap();
        vm.run_body().unwrap();
    });
    let c = cl.lock().unwrap().clone();
    let s = sl.lock().unwrap().clone();
    (c, s)
}

/// Chi-square homogeneity statistic of two byte histograms (255 degrees of freedom).
fn chi2(a: &[u8], b: &[u8]) -> f64 {
    let (mut ha, mut hb) = ([0f64; 256], [0f64; 256]);
    a.iter().for_each(|&x| ha[x as usize] += 1.0);
    b.iter().for_each(|&x| hb[x as usize] += 1.0);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let mut s = 0.0;
    for i in 0..256 {
        let tot = ha[i] + hb[i];
        if tot == 0.0 {
            continue;
        }
        let ea = tot * na / (na + nb);
        let eb = tot * nb / (na + nb);
        s += (ha[i] - ea).powi(2) / ea + (hb[i] - eb).powi(2) / eb;
    }
    s
}

/// chi2(255) critical value at p = 1e-6 (Wilson–Hilferty), so that testing every round of both
/// views keeps the false-alarm rate of the whole test below 1e-4.
const CRIT: f64 = 377.0;

fn program(insecure: bool) -> Program {
    let n = 4096;
    let mut b = ProgramBuilder::new(F);
    let x = b.input("x", Party::Client, &[n], F);
    let w = b.weight("w", Party::Server, false, &[n], F);
    if insecure {
        // Negative control: open the client's input without a mask.
        let d = b.buf(Kind::Public, n);
        b.emit(Instr::Open { d, a: x, bits: 64, lo: 0 });
    }
    let xw = b.mul_priv(x, w, 1);
    let sq = b.mul(x, 0, xw, F, 1);
    let r = b.relu(sq, F);
    let m = b.max_rows(r, 64, 64);
    b.output("m", m, Party::Client, &[64], F);
    b.finish()
}

#[test]
fn each_party_view_is_independent_of_the_other_secret() {
    let prog = program(false);
    let n = 4096;
    let mut rng = Rng(9);
    let xa = vec![0.0; n];
    let xb: Vec<f64> = rng.vec(n, -30.0, 30.0);
    let wa = vec![1.0; n];
    let wb: Vec<f64> = rng.vec(n, -3.0, 3.0);
    let (ca, sa) = transcripts(&prog, xa, wa);
    let (cb, sb) = transcripts(&prog, xb, wb);
    assert_eq!(sa.len(), sb.len());
    let rounds = sa.len();
    let mut worst: f64 = 0.0;
    for r in 0..rounds {
        // The server's view: everything the client sent.
        if sa[r].len() >= 512 {
            let s = chi2(&sa[r], &sb[r]);
            assert!(s < CRIT, "server's view of round {r} depends on the client's input: chi2 {s}");
            worst = worst.max(s);
        }
        // The client's view, except the last round, which reveals the output to the client.
        if r + 1 < rounds && ca[r].len() >= 512 {
            let s = chi2(&ca[r], &cb[r]);
            assert!(
                s < CRIT,
                "client's view of round {r} depends on the server's weights: chi2 {s}"
            );
            worst = worst.max(s);
        }
    }
    eprintln!("{rounds} rounds, worst chi2 {worst:.1} (critical {CRIT})");
}

#[test]
fn the_test_detects_an_unmasked_opening() {
    let prog = program(true);
    let n = 4096;
    let xa = vec![0.0; n];
    let xb: Vec<f64> = Rng(10).vec(n, -30.0, 30.0);
    let (_, sa) = transcripts(&prog, xa, vec![1.0; n]);
    let (_, sb) = transcripts(&prog, xb, vec![1.0; n]);
    let s = (0..sa.len()).map(|r| chi2(&sa[r], &sb[r])).fold(0.0, f64::max);
    assert!(s > CRIT, "an unmasked opening must be detected, chi2 {s}");
}

/// Greedy decoding's protocols: a secure argmax with index tracking over rows of a secret, then
/// the one-hot of the secret index (what the next token's embedding is gathered with).
fn argmax_program() -> Program {
    let (rows, len) = (64, 64);
    let mut b = ProgramBuilder::new(F);
    let x = b.input("x", Party::Client, &[rows * len], F);
    let w = b.weight("w", Party::Server, false, &[rows * len], F);
    let xw = b.mul_priv(x, w, 1);
    let params = veil_isa::builder::CompareParams { bits: 2 * F + 14, ignore: F, digit: 5 };
    let (_, idx) = b.argmax_rows(xw, rows, len, params);
    let oh = b.one_hot_secret(idx, len);
    b.output("oh", oh, Party::Client, &[rows * len], 0);
    b.finish()
}

#[test]
fn argmax_and_secret_one_hot_views_are_independent() {
    let prog = argmax_program();
    let n = 4096;
    let mut rng = Rng(21);
    // A: the maximum of every row at its start; B: anywhere.
    let xa: Vec<f64> = (0..n).map(|i| if i % 64 == 0 { 20.0 } else { -5.0 }).collect();
    let xb: Vec<f64> = rng.vec(n, -30.0, 30.0);
    let (ca, sa) = transcripts(&prog, xa, vec![1.0; n]);
    let (cb, sb) = transcripts(&prog, xb, rng.vec(n, 0.5, 2.0));
    assert_eq!(sa.len(), sb.len());
    let rounds = sa.len();
    let mut tested = 0;
    for r in 0..rounds {
        if sa[r].len() >= 512 {
            let s = chi2(&sa[r], &sb[r]);
            assert!(s < CRIT, "server's view of round {r} depends on the argmax: chi2 {s}");
            tested += 1;
        }
        if r + 1 < rounds && ca[r].len() >= 512 {
            let s = chi2(&ca[r], &cb[r]);
            assert!(s < CRIT, "client's view of round {r} depends on the weights: chi2 {s}");
            tested += 1;
        }
    }
    assert!(tested > 10, "only {tested} rounds large enough to test");
}

/// Token pruning's protocols: scores from both parties (`x · w`), the keep comparison against a
/// threshold, the oblivious compaction of the rows of a secret, and the kept count opened.
fn compaction_program() -> Program {
    let (n, row) = (64, 16);
    let mut b = ProgramBuilder::new(F);
    let x = b.input("x", Party::Client, &[n], F);
    let w = b.weight("w", Party::Server, false, &[n], F);
    let s = b.mul_priv(x, w, 1);
    let s = b.trunc(s, F);
    let total = b.sum(s, 1, n, 1);
    let theta = (1u64 << veil_isa::builder::THETA_BITS) / n as u64;
    let keep = b.prune_keep(s, total, theta, 1);
    let c = b.compaction(keep);
    let rows = b.mul_imm(x, 1);
    let rows = b.broadcast(rows, &[n, 1], &[n, row]);
    let moved = b.compact_rows(&c, rows, row);
    let d = b.buf(Kind::Public, 1);
    b.emit(Instr::Open { d, a: c.count, bits: 64, lo: 0 });
    b.output("rows", moved, Party::Client, &[n * row], F);
    b.output("count", d, Party::Client, &[1], 0);
    b.finish()
}

#[test]
fn compaction_views_do_not_depend_on_which_tokens_are_kept() {
    let prog = compaction_program();
    let n = 64;
    // Sixteen tokens far above the mean score: the first sixteen, or a scattered sixteen.
    let first: Vec<f64> = (0..n).map(|j| if j < 16 { 3.0 } else { 0.25 }).collect();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng(33);
    for i in (1..n).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut scattered = vec![0.25; n];
    // Token 0 is protected: keep the count equal by making it one of the sixteen in both.
    scattered[0] = 3.0;
    for &j in order.iter().filter(|&&j| j != 0).take(15) {
        scattered[j] = 3.0;
    }
    let ones = vec![1.0; n];
    let mut tested = 0;
    // The server's view when the client's scores pick the tokens; the client's view when the
    // server's weights do.
    for (xa, xb, wa, wb) in [
        (first.clone(), scattered.clone(), ones.clone(), ones.clone()),
        (ones.clone(), ones.clone(), first.clone(), scattered.clone()),
    ] {
        let client_picks = xa != xb;
        let (ca, sa) = transcripts(&prog, xa, wa);
        let (cb, sb) = transcripts(&prog, xb, wb);
        assert_eq!(sa.len(), sb.len());
        let rounds = sa.len();
        for r in 0..rounds {
            let (a, b) = if client_picks { (&sa[r], &sb[r]) } else { (&ca[r], &cb[r]) };
            // The client's last rounds reveal the count and the rows to it.
            if a.len() >= 512 && (client_picks || r + 2 < rounds) {
                let s = chi2(a, b);
                assert!(s < CRIT, "round {r} depends on which tokens are kept: chi2 {s}");
                tested += 1;
            }
        }
    }
    assert!(tested >= 4, "only {tested} rounds large enough to test");
}
