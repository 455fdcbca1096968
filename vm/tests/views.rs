//! A party's whole view against the other party's secret: its own share of every value, and
//! what it received (openings, messages), combined the way the party could combine them.
//!
//! The transcript test (`transcript.rs`) looks at each message's bytes on its own, so it cannot
//! see a mask used for two openings (each opening is uniform; their difference is not) or a
//! sharing opened in full. Here the party also computes, from its view: every opened value
//! minus its own share of what was opened (the other party's share), and the difference of
//! every two openings (and of every two messages) of one length and width. Over runs with fresh
//! dealer seeds these are uniform whatever the other party's secret is when every opening is
//! masked by a fresh mask used once; a chi-square test compares their byte histograms for two
//! secrets. Negative controls: a program that uses one mask for two openings, and one that
//! opens a sharing unmasked, are caught.

mod common;
use common::*;
use veil_isa::builder::ProgramBuilder;
use veil_isa::{Instr, Kind, Party, Program};
use veil_vm::dealer::Dealer;
use veil_vm::material::Material;
use veil_vm::net::local::{dealer_channel, LocalTransport};
use veil_vm::net::Prefetched;
use veil_vm::{PartyVm, Values};

const N: u32 = 256;

/// Runs `prog` (an SSA program: every buffer written once, so its final contents are what
/// the party held) with the dealer seeds of run `run`, and returns each party's final arrays.
fn run_views(prog: &Program, x: &[f64], w: &[f64], run: u64) -> [Vec<Vec<u64>>; 2] {
    let seed = |p: u64| {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&run.to_le_bytes());
        s[8] = p as u8;
        s
    };
    let seeds = [seed(0), seed(1)];
    let (sink, mut src) = dealer_channel();
    let setup_seed = veil_vm::run::setup_seed(seeds[1]);
    let base = std::sync::Arc::new(veil_vm::dealer::Base::new(prog, setup_seed).unwrap());
    let mut d = Dealer::new(prog, base, seeds, Box::new(sink));
    d.deal_body().unwrap();
    d.finish().unwrap();
    let pre = Prefetched::drain(&mut src).unwrap();
    let (c, s) = LocalTransport::pair();
    let arrays = |vm: &PartyVm| -> Vec<Vec<u64>> {
        (0..prog.buffers.len())
            .map(|b| vm.raw_buffer(veil_isa::Buf(b as u32)).unwrap_or(&[]).to_vec())
            .collect()
    };
    std::thread::scope(|sc| {
        let server = sc.spawn(|| {
            let material = Material::new(Party::Server, setup_seed, None);
            let mut vm = PartyVm::new(prog, Party::Server, material, Box::new(s), 1 << 30).unwrap();
            // The view is every array the party held: none may go back to the pool.
            vm.keep_values(true);
            vm.load_weights(&[("w".into(), Values::F64(w.to_vec()))]).unwrap();
            vm.run_setup().unwrap();
            vm.set_material(Material::new(Party::Server, seeds[1], Some(Box::new(pre))));
            vm.run_body().unwrap();
            arrays(&vm)
        });
        let material = Material::none(Party::Client);
        let mut vm = PartyVm::new(prog, Party::Client, material, Box::new(c), 1 << 30).unwrap();
        vm.keep_values(true);
        vm.run_setup().unwrap();
        vm.set_material(Material::new(Party::Client, seeds[0], None));
        vm.set_inputs(&[("x".into(), Values::F64(x.to_vec()))]).unwrap();
        vm.run_body().unwrap();
        [arrays(&vm), server.join().unwrap()]
    })
}

/// A value a party received: (length, width, XOR-shared bits?), a name, the values.
type Received = ((usize, u8, bool), String, Vec<u64>);

/// What `me` can compute from its view, each quantity named and as bytes: every value it
/// received (openings, messages), each opening minus its own share of the opened value, and
/// the difference of every two received values of one length and width (XOR for bits).
fn derived(prog: &Program, me: Party, bufs: &[Vec<u64>]) -> Vec<(String, Vec<u8>)> {
    let mut got: Vec<Received> = Vec::new();
    let mut out = Vec::new();
    let push = |out: &mut Vec<(String, Vec<u8>)>, name: String, v: &[u64], bits: u8| {
        let bytes = (bits as usize).div_ceil(8);
        out.push((name, v.iter().flat_map(|x| x.to_le_bytes()[..bytes].to_vec()).collect()));
    };
    let wrap = |x: u64, bits: u8| if bits == 64 { x } else { x & ((1 << bits) - 1) };
    let sections = [("setup", &prog.setup), ("body", &prog.body)];
    let code = sections.iter().flat_map(|(s, c)| c.iter().enumerate().map(move |(k, i)| (s, k, i)));
    for (section, k, ins) in code {
        let name = format!("{section} #{k} `{}`", ins.disas());
        match *ins {
            Instr::Open { d, a, bits, lo } => {
                // What crossed the wire: bits lo..bits of each share.
                let sent = bits - lo;
                let hi = |x: u64| wrap(wrap(x, bits) >> lo, sent);
                let c: Vec<u64> = bufs[d.0 as usize].iter().map(|&x| hi(x)).collect();
                let other: Vec<u64> = c
                    .iter()
                    .zip(&bufs[a.0 as usize])
                    .map(|(&c, &o)| wrap(c.wrapping_sub(hi(o)), sent))
                    .collect();
                push(&mut out, format!("{name} minus own share"), &other, sent);
                got.push(((c.len(), sent, false), name, c));
            }
            Instr::OpenB { d, a } => {
                let c = bufs[d.0 as usize].clone();
                let other: Vec<u64> =
                    c.iter().zip(&bufs[a.0 as usize]).map(|(c, o)| c ^ o).collect();
                push(&mut out, format!("{name} minus own share"), &other, 64);
                got.push(((c.len(), 64, true), name, c));
            }
            Instr::Send { d, from, .. } if from != me => {
                got.push(((bufs[d.0 as usize].len(), 64, false), name, bufs[d.0 as usize].clone()));
            }
            _ => {}
        }
    }
    for (i, (gi, ni, vi)) in got.iter().enumerate() {
        push(&mut out, ni.clone(), vi, gi.1);
        for (gj, nj, vj) in &got[i + 1..] {
            if gi == gj {
                let diff: Vec<u64> = vi
                    .iter()
                    .zip(vj)
                    .map(|(&a, &b)| if gi.2 { a ^ b } else { wrap(a.wrapping_sub(b), gi.1) })
                    .collect();
                push(&mut out, format!("{ni} minus {nj}"), &diff, gi.1);
            }
        }
    }
    out
}

/// Chi-square homogeneity statistic of two byte histograms (255 degrees of freedom).
fn chi2(a: &[u8], b: &[u8]) -> f64 {
    let (mut ha, mut hb) = ([0f64; 256], [0f64; 256]);
    a.iter().for_each(|&x| ha[x as usize] += 1.0);
    b.iter().for_each(|&x| hb[x as usize] += 1.0);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    (0..256)
        .filter(|&i| ha[i] + hb[i] > 0.0)
        .map(|i| {
            let tot = ha[i] + hb[i];
            let (ea, eb) = (tot * na / (na + nb), tot * nb / (na + nb));
            (ha[i] - ea).powi(2) / ea + (hb[i] - eb).powi(2) / eb
        })
        .sum()
}

/// chi2(255) critical value at p = 1e-8 (Wilson–Hilferty): each quantity is tested on its own
/// (quantities that share an opening are not independent, so their bytes are not pooled), and
/// a program has some hundreds of them. The runs are seeded, so each statistic is fixed.
const CRIT: f64 = 403.0;

/// Bytes a quantity needs (per secret) to be tested: 8 expected per histogram cell.
const MIN_BYTES: usize = 2048;

/// Per quantity, its bytes over runs.
type Pooled = Vec<(String, Vec<u8>)>;

fn pool(into: &mut Pooled, run: Vec<(String, Vec<u8>)>) {
    if into.is_empty() {
        *into = run;
    } else {
        for ((_, acc), (_, b)) in into.iter_mut().zip(run) {
            acc.extend(b);
        }
    }
}

/// The worst quantity of one view: its chi-square and name.
fn worst(a: &Pooled, b: &Pooled) -> (f64, String) {
    a.iter()
        .zip(b)
        .filter(|((_, x), (_, y))| x.len().min(y.len()) >= MIN_BYTES)
        .map(|((name, x), (_, y))| (chi2(x, y), name.clone()))
        .fold((0.0, String::new()), |m, c| if c.0 > m.0 { c } else { m })
}

/// The worst quantity of each party's view (client, server) over runs with secrets A and B:
/// the client's input varies for the server's view, the server's weights for the client's.
fn worst_chi2(prog: &Program) -> [(f64, String); 2] {
    worst_chi2_len(prog, N)
}

/// As [`worst_chi2`], for inputs of `n` elements (bit openings need 8·`MIN_BYTES`/4 of them
/// to be tested at all).
fn worst_chi2_len(prog: &Program, n: u32) -> [(f64, String); 2] {
    let n = n as usize;
    let mut rng = Rng(5);
    let (xa, xb) = (vec![0.0; n], rng.vec(n, -30.0, 30.0));
    let (wa, wb) = (vec![1.0; n], rng.vec(n, -3.0, 3.0));
    let mut views: [[Pooled; 2]; 2] = Default::default();
    for run in 0..4 {
        let a = run_views(prog, &xa, &wa, run);
        let b = run_views(prog, &xb, &wa, 100 + run);
        pool(&mut views[1][0], derived(prog, Party::Server, &a[1]));
        pool(&mut views[1][1], derived(prog, Party::Server, &b[1]));
        let a = run_views(prog, &xb, &wa, 200 + run);
        let b = run_views(prog, &xb, &wb, 300 + run);
        pool(&mut views[0][0], derived(prog, Party::Client, &a[0]));
        pool(&mut views[0][1], derived(prog, Party::Client, &b[0]));
    }
    [worst(&views[0][0], &views[0][1]), worst(&views[1][0], &views[1][1])]
}

fn inputs(b: &mut ProgramBuilder) -> (veil_isa::Buf, veil_isa::Buf) {
    inputs_len(b, N)
}

fn inputs_len(b: &mut ProgramBuilder, n: u32) -> (veil_isa::Buf, veil_isa::Buf) {
    let x = b.input("x", Party::Client, &[n], F);
    let w = b.weight("w", Party::Server, false, &[n], F);
    (x, w)
}

/// Enough elements that a bit opening pools `MIN_BYTES` over the runs.
const BITS_N: u32 = 4096;

/// Products (both operands opened), a truncation, a product with a private weight, ReLU and a
/// maximum (comparisons, AND gates, selections): the client's output is the last value only.
fn protocols() -> Program {
    let mut b = builder();
    let (x, w) = inputs(&mut b);
    let p = b.mul(x, 0, w, 0, 1);
    let t = b.trunc(p, F);
    let q = b.mul_priv(t, w, 1);
    let r = b.relu(q, F);
    let m = b.max_rows(r, 16, 16);
    b.output("m", m, Party::Client, &[16], F);
    b.finish_ssa()
}

#[test]
fn a_party_view_combined_with_its_shares_is_independent_of_the_other_secret() {
    let [client, server] = worst_chi2(&protocols());
    eprintln!(
        "worst chi2: client's view {client:.1?}, server's view {server:.1?} (critical {CRIT})"
    );
    assert!(server.0 < CRIT, "the server's view depends on the client's input: {server:?}");
    assert!(client.0 < CRIT, "the client's view depends on the server's weights: {client:?}");
}

/// Narrow openings (modulo `2^w`, `w < 64`), truncating and not, and what is built on them:
/// a square, a product of two wrapped openings (its cross term), a comparison and a selection
/// (and both fused, `drelu_arith`),
/// with the dealer's corrections for the wrap terms sent narrow (`dprod` with `bits < 64`,
/// `dtrunc`'s `msb`). The values stay inside their widths for both secrets.
fn narrow_protocols() -> Program {
    let mut b = builder();
    let (x, w) = inputs(&mut b);
    let p = b.mul(x, 0, w, 0, 1); // |x·w| ≤ 90 at 2f: 39 bits and headroom
    let m = b.masked_open_w(p, F, 42);
    let sq = b.square_masked(&m);
    let mx = b.masked_open_w(x, 0, 24); // |x| ≤ 30 at f
    let pr = b.mul_masked(&m, &mx, 1);
    let bit = b.drelu(&mx, 0);
    let sel = b.select(bit, &m);
    let sel = b.shl(sel, F);
    // The fused comparison: its last AND gate's three openings, the dealt cases and their
    // products with a wrapped opening's mask.
    let (_, fused) = b.drelu_arith(&mx, 0, Some(&m));
    let fused = b.shl(fused.expect("asked for the selection"), F);
    let o = b.add(sq, pr);
    let o = b.add(o, sel);
    let o = b.add(o, fused);
    b.output("o", o, Party::Client, &[N], 2 * F);
    b.finish_ssa()
}

#[test]
fn narrow_openings_and_narrow_dealer_words_keep_the_views_independent() {
    let prog = narrow_protocols();
    let narrow = prog.body.iter().any(|i| matches!(i, Instr::DProd { bits, .. } if *bits < 64));
    assert!(narrow, "the program has narrow dealer words");
    let [client, server] = worst_chi2(&prog);
    eprintln!("worst chi2 with narrow openings: client {client:.1?}, server {server:.1?}");
    assert!(server.0 < CRIT, "the server's view depends on the client's input: {server:?}");
    assert!(client.0 < CRIT, "the client's view depends on the server's weights: {client:?}");
}

/// The negative controls for an opening with no mask: x·w's bits `lo..bits` sent as they
/// are must show in both views (what crosses the wire is each share's bits `lo..bits`, and
/// the view test reads exactly that).
fn assert_unmasked_opening_is_seen(bits: u8, lo: u8, what: &str) {
    let mut b = builder();
    let (x, w) = inputs(&mut b);
    let p = b.mul(x, 0, w, 0, 1);
    let c = b.buf(Kind::Public, N);
    b.emit(Instr::Open { d: c, a: p, bits, lo });
    b.output("p", p, Party::Client, &[N], 2 * F);
    let prog = b.finish_ssa();
    let [client, server] = worst_chi2(&prog);
    eprintln!("worst chi2 with {what}: client {client:.1?}, server {server:.1?}");
    assert!(server.0 > CRIT && client.0 > CRIT, "{what} must be seen");
}

#[test]
fn the_view_test_sees_a_narrow_opening_unmasked() {
    // At a narrow width: x·w opened modulo 2^42.
    assert_unmasked_opening_is_seen(42, 0, "an unmasked narrow opening");
}

#[test]
fn the_view_test_sees_a_truncating_opening_unmasked() {
    // For openings that send only their high bits: x·w's bits 16..42.
    assert_unmasked_opening_is_seen(42, F, "an unmasked truncating opening");
}

#[test]
fn the_view_test_sees_one_mask_used_for_two_openings() {
    // x + r and 3x + r: each opening is uniform, their difference is 2x.
    let mut b = builder();
    let (x, w) = inputs(&mut b);
    let r = b.buf(Kind::Share, N);
    b.emit(Instr::DMask { d: r });
    let y1 = b.add(x, r);
    let c1 = b.buf(Kind::Public, N);
    b.emit(Instr::Open { d: c1, a: y1, bits: 64, lo: 0 });
    let x3 = b.mul_imm(x, 3);
    let y2 = b.add(x3, r);
    let c2 = b.buf(Kind::Public, N);
    b.emit(Instr::Open { d: c2, a: y2, bits: 64, lo: 0 });
    let s = b.sub(c2, r);
    let p = b.mul(s, 0, w, 0, 1);
    b.output("p", p, Party::Client, &[N], 2 * F);
    let prog = b.finish_ssa();
    let [_, server] = worst_chi2(&prog);
    eprintln!("worst chi2 of the server's view with a reused mask: {server:.1?}");
    assert!(server.0 > CRIT, "a reused mask must be seen: {server:?}");
    assert!(
        server.1.contains(" minus body #"),
        "seen in the difference of two openings: {server:?}"
    );
    // The leakage analysis refuses it too.
    assert!(veil_isa::verify(&prog).is_err());
}

#[test]
fn the_view_test_sees_a_sharing_opened_unmasked() {
    assert_unmasked_opening_is_seen(64, 0, "the product opened unmasked");
}

#[test]
fn the_view_test_sees_one_dealer_bit_masking_two_bit_openings() {
    // The flaw the fused comparison's last gate must avoid: its three bit openings each need a
    // dealer bit of their own. [x ≥ 0] ⊕ a and [x ≥ 2.5] ⊕ a are each uniform; their XOR is
    // [0 ≤ x < 2.5].
    let mut b = builder();
    let (x, w) = inputs_len(&mut b, BITS_N);
    let m = b.masked_open(x, 0);
    let lo = b.drelu(&m, 0);
    let hi = b.drelu(&m, veil_vm::ring::encode(2.5, F));
    let a = b.buf(Kind::Bits, BITS_N);
    b.emit(Instr::DBits { d: a });
    for bits in [lo, hi] {
        let masked = b.buf(Kind::Bits, BITS_N);
        b.emit(Instr::XorB { d: masked, a: bits, b: a });
        let c = b.buf(Kind::PubBits, BITS_N);
        b.emit(Instr::OpenB { d: c, a: masked });
    }
    let p = b.mul(x, 0, w, 0, 1);
    b.output("p", p, Party::Client, &[BITS_N], 2 * F);
    let prog = b.finish_ssa();
    let [_, server] = worst_chi2_len(&prog, BITS_N);
    eprintln!("worst chi2 of the server's view with one dealer bit for two openings: {server:.1?}");
    assert!(server.0 > CRIT, "a reused dealer bit must be seen: {server:?}");
}

#[test]
fn the_fused_comparison_keeps_the_views_independent() {
    // Long enough that every bit opening (the digit tree's ANDs and the last gate's D, E, F)
    // is tested; a comparison, the fused selection of the compared value and of a product
    // truncated with a wrap term, and the fused conversion.
    let mut b = builder();
    let (x, w) = inputs_len(&mut b, BITS_N);
    let mx = b.masked_open(x, 0);
    let p = b.mul(x, 0, w, 0, 1);
    let m = b.masked_open_w(p, F, 48);
    let (bit, relu) = b.drelu_arith(&mx, 0, Some(&mx));
    let (_, sel) = b.drelu_arith(&mx, veil_vm::ring::encode(2.5, F), Some(&m));
    let o = b.add(relu.expect("selection"), sel.expect("selection"));
    let o = b.add(o, bit);
    b.output("o", o, Party::Client, &[BITS_N], F);
    let prog = b.finish_ssa();
    assert!(prog.body.iter().any(|i| matches!(i, Instr::DCase { .. })), "the gate is fused");
    let [client, server] = worst_chi2_len(&prog, BITS_N);
    eprintln!("worst chi2 with fused comparisons: client {client:.1?}, server {server:.1?}");
    assert!(server.0 < CRIT, "the server's view depends on the client's input: {server:?}");
    assert!(client.0 < CRIT, "the client's view depends on the server's weights: {client:?}");
}
