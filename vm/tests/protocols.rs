//! Every protocol against plaintext, on random and edge inputs, over in-memory and TCP
//! transports; each run also checks predicted against measured bytes and rounds.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays

mod common;
use common::*;
use veil_isa::{Kind, Party};

fn both_transports(f: impl Fn(bool)) {
    f(false);
    f(true);
}

#[test]
fn local_add_sub_and_public_scale() {
    both_transports(|tcp| {
        let mut b = builder();
        let n = 64;
        let x = b.input("x", Party::Client, &[n], F);
        let w = b.weight("w", Party::Server, false, &[n], F);
        let s = b.add(x, w);
        let d = b.sub(s, w);
        let three = b.mul_imm(d, 3);
        let neg = b.mul_imm(s, (-2i64) as u64);
        b.output("sum", s, Party::Client, &[n], F);
        b.output("x3", three, Party::Client, &[n], F);
        b.output("m2", neg, Party::Client, &[n], F);
        let prog = b.finish();
        let mut rng = Rng(1);
        let xs = rng.vec(n as usize, -1000.0, 1000.0);
        let ws = rng.vec(n as usize, -1000.0, 1000.0);
        let r = run(&prog, vec![("x", xs.clone())], vec![("w", ws.clone())], tcp);
        for i in 0..n as usize {
            let (x, w) = ((xs[i] * 65536.0).round() / 65536.0, (ws[i] * 65536.0).round() / 65536.0);
            assert_eq!(out(&r, "sum")[i], x + w);
            assert_eq!(out(&r, "x3")[i], 3.0 * x);
            assert_eq!(out(&r, "m2")[i], -2.0 * (x + w));
        }
        // Reveal is the only communication: one round, the server sends 8 bytes per element.
        assert_eq!(r.client.body.rounds, 1);
        assert!(r.server.body.sent > 0);
    });
}

#[test]
fn beaver_multiplication_square_and_truncation() {
    both_transports(|tcp| {
        let mut b = builder();
        let mut xs = edge_values(300.0);
        let mut ys = edge_values(-200.0);
        let mut rng = Rng(2);
        xs.extend(rng.vec(200, -50.0, 50.0));
        ys.extend(rng.vec(200, -50.0, 50.0));
        let n = xs.len() as u32;
        let x = b.input("x", Party::Client, &[n], F);
        let y = b.weight("y", Party::Server, false, &[n], F);
        let p = b.mul(x, 0, y, 0, 1);
        let sq = b.square(x, 0);
        let pt = b.trunc(p, F);
        b.output("p", p, Party::Client, &[n], 2 * F);
        b.output("sq", sq, Party::Client, &[n], 2 * F);
        b.output("pt", pt, Party::Client, &[n], F);
        let prog = b.finish();
        let r = run(&prog, vec![("x", xs.clone())], vec![("y", ys.clone())], tcp);
        for i in 0..n as usize {
            let (x, y) = ((xs[i] * 65536.0).round() / 65536.0, (ys[i] * 65536.0).round() / 65536.0);
            assert_eq!(out(&r, "p")[i], x * y, "exact product at 32 fractional bits");
            assert_eq!(out(&r, "sq")[i], x * x);
            // A truncating opening is within 1.5 ulp of the exact value (it drops the bits
            // it truncates, and with them the carry out of them).
            let err = out(&r, "pt")[i] - x * y;
            assert!(err.abs() < TRUNC, "truncation error {err} at {x}·{y}");
        }
        // mul opens x and y (1 round), trunc opens the product (1 round), reveal (1 round);
        // the square reuses x's opening.
        assert_eq!(r.client.body.rounds, 3);
    });
}

#[test]
fn products_of_truncated_openings() {
    // x·y at 2f, then (x·y >> f)·z with the truncation folded into z's product opening.
    let mut b = builder();
    let mut rng = Rng(3);
    let n = 300;
    let (xs, ys, zs) = (rng.vec(n, -20.0, 20.0), rng.vec(n, -20.0, 20.0), rng.vec(n, -4.0, 4.0));
    let x = b.input("x", Party::Client, &[n as u32], F);
    let y = b.input("y", Party::Client, &[n as u32], F);
    let z = b.weight("z", Party::Server, false, &[n as u32], F);
    let xy = b.mul(x, 0, y, 0, 1);
    let xyz = b.mul(xy, F, z, 0, 1);
    let xy2 = b.square(xy, F);
    b.output("xyz", xyz, Party::Client, &[n as u32], 2 * F);
    b.output("xy2", xy2, Party::Client, &[n as u32], 2 * F);
    let prog = b.finish();
    let r = run(&prog, vec![("x", xs.clone()), ("y", ys.clone())], vec![("z", zs.clone())], false);
    for i in 0..n {
        let q = |v: f64| (v * 65536.0).round() / 65536.0;
        let t = q(xs[i]) * q(ys[i]);
        let e1 = out(&r, "xyz")[i] - t * q(zs[i]);
        assert!(e1.abs() <= TRUNC * q(zs[i]).abs() + 1e-12, "xyz error {e1}");
        let e2 = out(&r, "xy2")[i] - t * t;
        assert!(e2.abs() <= 2.0 * TRUNC * t.abs() + TRUNC * TRUNC + 1e-12, "xy2 error {e2}");
    }
}

#[test]
fn matrix_products_secret_and_constant_operands() {
    both_transports(|tcp| {
        let (m, k, n) = (5u32, 7u32, 3u32);
        let mut rng = Rng(4);
        let xs = rng.vec((m * k) as usize, -3.0, 3.0);
        let ys = rng.vec((k * n) as usize, -3.0, 3.0);
        let mut b = builder();
        let x = b.input("x", Party::Client, &[m, k], F);
        let yc = b.input("yc", Party::Client, &[k, n], F);
        let w = b.weight("w", Party::Server, false, &[k, n], F);
        let g = b.weight("g", Party::Server, false, &[k], F);
        let both = b.matmul(x, yc, 1, m, k, n);
        let cst = b.matmul_priv(x, w, 1, m, k, n);
        let scaled = b.mul_priv(x, g, 1);
        b.output("both", both, Party::Client, &[m, n], 2 * F);
        b.output("cst", cst, Party::Client, &[m, n], 2 * F);
        b.output("scaled", scaled, Party::Client, &[m, k], 2 * F);
        let prog = b.finish();
        let gs = rng.vec(k as usize, -2.0, 2.0);
        let r = run(
            &prog,
            vec![("x", xs.clone()), ("yc", ys.clone())],
            vec![("w", ys.clone()), ("g", gs.clone())],
            tcp,
        );
        let q = |v: f64| (v * 65536.0).round() / 65536.0;
        for i in 0..m as usize {
            for j in 0..n as usize {
                let want: f64 = (0..k as usize)
                    .map(|p| q(xs[i * k as usize + p]) * q(ys[p * n as usize + j]))
                    .sum();
                assert!((out(&r, "both")[i * n as usize + j] - want).abs() < 1e-9);
                assert!((out(&r, "cst")[i * n as usize + j] - want).abs() < 1e-9);
            }
            for p in 0..k as usize {
                let want = q(xs[i * k as usize + p]) * q(gs[p]);
                assert!((out(&r, "scaled")[i * k as usize + p] - want).abs() < 1e-9);
            }
        }
        // The constant operand was masked once, in setup: per inference the client sends only
        // its masked activation (shared by both constant products) and the server sends nothing
        // but the revealed outputs.
        assert!(r.client.setup.rounds == 1 && r.server.setup.sent > 0);
    });
}

#[test]
fn openings_at_one_depth_share_one_round() {
    let mut b = builder();
    let n = 16;
    let xs: Vec<_> = (0..6).map(|i| b.input(&format!("x{i}"), Party::Client, &[n], F)).collect();
    let mut prods = Vec::new();
    for i in 0..3 {
        prods.push(b.mul(xs[2 * i], 0, xs[2 * i + 1], 0, 1));
    }
    let s1 = b.add(prods[0], prods[1]);
    let s = b.add(s1, prods[2]);
    b.output("s", s, Party::Client, &[n], 2 * F);
    let prog = b.finish();
    let mut rng = Rng(5);
    let data: Vec<Vec<f64>> = (0..6).map(|_| rng.vec(n as usize, -2.0, 2.0)).collect();
    let names: Vec<String> = (0..6).map(|i| format!("x{i}")).collect();
    let r = run(&prog, names.iter().map(|s| s.as_str()).zip(data.clone()).collect(), vec![], false);
    // Three independent products: six openings in one round, then the reveal.
    assert_eq!(r.client.body.rounds, 2);
    let q = |v: f64| (v * 65536.0).round() / 65536.0;
    for j in 0..n as usize {
        let want: f64 = (0..3).map(|i| q(data[2 * i][j]) * q(data[2 * i + 1][j])).sum();
        assert!((out(&r, "s")[j] - want).abs() < 1e-9);
    }
}

#[test]
fn drelu_select_relu_and_max() {
    both_transports(|tcp| {
        let mut b = builder();
        let mut xs = edge_values(1000.0);
        xs.extend([0.01, -0.01, 3.0 * ULP * 256.0, -3.0 * ULP * 256.0]);
        let mut rng = Rng(6);
        xs.extend(rng.vec(300, -100.0, 100.0));
        let n = xs.len() as u32;
        let x = b.input("x", Party::Client, &[n], F);
        let m = b.masked_open(x, 0);
        let bit = b.drelu(&m, 0);
        let bit_a = b.b2a(bit);
        let above = b.drelu(&m, ringf(2.5));
        let above_a = b.b2a(above);
        let relu = b.relu(x, 0);
        b.output("bit", bit_a, Party::Client, &[n], 0);
        b.output("above", above_a, Party::Client, &[n], 0);
        b.output("relu", relu, Party::Client, &[n], F);
        let rows = 7u32;
        let len = 13u32;
        let ys = rng.vec((rows * len) as usize, -50.0, 50.0);
        let y = b.input("y", Party::Client, &[rows, len], F);
        let mx = b.max_rows(y, rows, len);
        b.output("max", mx, Party::Client, &[rows], F);
        let prog = b.finish();
        let r = run(&prog, vec![("x", xs.clone()), ("y", ys.clone())], vec![], tcp);
        let q = |v: f64| (v * 65536.0).round() / 65536.0;
        let exact_above = 2f64.powi(8) * ULP; // |x| ≥ 2^ignore ring units
        for i in 0..n as usize {
            let x = q(xs[i]);
            if x.abs() >= exact_above {
                assert_eq!(out(&r, "bit")[i], (x >= 0.0) as u8 as f64, "drelu({x})");
                assert_eq!(out(&r, "relu")[i], x.max(0.0), "relu({x})");
            } else {
                assert!((out(&r, "relu")[i] - x.max(0.0)).abs() <= exact_above);
            }
            if (x - 2.5).abs() >= exact_above {
                assert_eq!(out(&r, "above")[i], (x >= 2.5) as u8 as f64, "[{x} ≥ 2.5]");
            }
        }
        for row in 0..rows as usize {
            let want =
                (0..len as usize).map(|j| q(ys[row * len as usize + j])).fold(f64::MIN, f64::max);
            assert!((out(&r, "max")[row] - want).abs() <= exact_above, "row {row}");
        }
    });
}

#[test]
fn fused_comparison_converts_and_selects_within_its_own_rounds() {
    // drelu_arith gives [x ≥ c] as 0/1 shares and [x ≥ c]·y, for y the compared value itself
    // (plain opening), a truncated opening of another value (its wrap term), and none; in the
    // rounds of the comparison alone.
    both_transports(|tcp| {
        let mut rng = Rng(21);
        let mut xs = edge_values(1000.0);
        xs.extend([0.01, -0.01, 2.5 + 0.01, 2.5 - 0.01]);
        xs.extend(rng.vec(256 - xs.len(), -100.0, 100.0));
        let n = xs.len() as u32;
        let ys = rng.vec(n as usize, -30.0, 30.0);
        let ws = rng.vec(n as usize, -3.0, 3.0);
        let mut b = builder();
        let x = b.input("x", Party::Client, &[n], F);
        let y = b.input("y", Party::Client, &[n], F);
        let w = b.weight("w", Party::Server, false, &[n], F);
        let mx = b.masked_open(x, 0);
        let (bit, sel) = b.drelu_arith(&mx, 0, Some(&mx));
        let (above, _) = b.drelu_arith(&mx, ringf(2.5), None);
        let yw = b.mul(y, 0, w, 0, 1);
        let myw = b.masked_open_w(yw, F, 48); // truncating: y·w at f with a wrap term
        let (_, sel_yw) = b.drelu_arith(&mx, 0, Some(&myw));
        b.output("bit", bit, Party::Client, &[n], 0);
        b.output("relu", sel.unwrap(), Party::Client, &[n], F);
        b.output("above", above, Party::Client, &[n], 0);
        b.output("sel_yw", sel_yw.unwrap(), Party::Client, &[n], F);
        let prog = b.finish();
        let r =
            run(&prog, vec![("x", xs.clone()), ("y", ys.clone())], vec![("w", ws.clone())], tcp);
        let q = |v: f64| (v * 65536.0).round() / 65536.0;
        let exact_above = 2f64.powi(8) * ULP;
        for i in 0..n as usize {
            let x = q(xs[i]);
            let yw = q(ys[i]) * q(ws[i]);
            if x.abs() >= exact_above {
                assert_eq!(out(&r, "bit")[i], (x >= 0.0) as u8 as f64, "[{x} ≥ 0]");
                assert_eq!(out(&r, "relu")[i], x.max(0.0), "relu({x})");
                let want = if x >= 0.0 { yw } else { 0.0 };
                assert!((out(&r, "sel_yw")[i] - want).abs() <= 2.0 * ULP, "[{x} ≥ 0]·{yw}");
            } else {
                assert!((out(&r, "relu")[i] - x.max(0.0)).abs() <= exact_above);
            }
            if (x - 2.5).abs() >= exact_above {
                assert_eq!(out(&r, "above")[i], (x >= 2.5) as u8 as f64, "[{x} ≥ 2.5]");
            }
        }
        // The openings of x and of y·w, then the comparison's AND rounds: the defaults
        // (36 bits, 8 ignored) in two 14-bit digits for so few elements, so one AND round, and
        // no round of its own for the conversion or the selections.
        assert_eq!(r.client.body.rounds, 2 + 1, "rounds");
    });
}

#[test]
fn fused_comparison_saves_the_conversion_round_of_drelu_and_b2a() {
    // Against the unfused protocol on a buffer too long for wide digits (3 AND rounds).
    let n = 20_000u32;
    let rounds = |fused: bool| {
        let mut b = builder();
        let x = b.input("x", Party::Client, &[n], F);
        let m = b.masked_open(x, 0);
        let bit = if fused {
            b.drelu_arith(&m, 0, None).0
        } else {
            let bits = b.drelu(&m, 0);
            b.b2a(bits)
        };
        b.output("bit", bit, Party::Client, &[n], 0);
        veil_isa::cost::program_cost(&b.finish()).body.rounds
    };
    // Opening, 3 AND levels, conversion, output.
    assert_eq!(rounds(false), 1 + 3 + 1 + 1);
    assert_eq!(rounds(true), 1 + 3 + 1);
}

#[test]
fn a_row_maximum_of_a_truncation_starts_before_it() {
    // max_rows of trunc(p): the first level's differences are p's (at 2f), truncated by their
    // own openings in the round that truncates p; the result is the same maximum.
    both_transports(|tcp| {
        let (rows, len) = (6u32, 16u32);
        let mut rng = Rng(23);
        let xs = rng.vec((rows * len) as usize, -40.0, 40.0);
        let ws = rng.vec((rows * len) as usize, -2.0, 2.0);
        let build = |via_trunc: bool| {
            let mut b = builder();
            let x = b.input("x", Party::Client, &[rows * len], F);
            let w = b.weight("w", Party::Server, false, &[rows * len], F);
            let p = b.mul(x, 0, w, 0, 1);
            let s = b.trunc(p, F);
            // The same values, not recognisably a truncation: a copy.
            let s = if via_trunc { s } else { b.view(s, 0, &[rows * len], &[1]) };
            let m = b.max_rows(s, rows, len);
            b.output("max", m, Party::Client, &[rows], F);
            b.finish()
        };
        let (fast, slow) = (build(true), build(false));
        let rounds = |p: &veil_isa::Program| veil_isa::cost::program_cost(p).body.rounds;
        assert_eq!(rounds(&fast) + 1, rounds(&slow), "one round fewer");
        let r = run(&fast, vec![("x", xs.clone())], vec![("w", ws.clone())], tcp);
        let q = |v: f64| (v * 65536.0).round() / 65536.0;
        for row in 0..rows as usize {
            let want = (0..len as usize)
                .map(|j| q(xs[row * len as usize + j]) * q(ws[row * len as usize + j]))
                .fold(f64::MIN, f64::max);
            // Within the tournament's resolution (2^12 ring units) and the truncations' ulps.
            let got = out(&r, "max")[row];
            assert!((got - want).abs() <= 2f64.powi(-4) + 4.0 * ULP, "row {row}: {got} vs {want}");
        }
    });
}

fn ringf(x: f64) -> u64 {
    veil_vm::ring::encode(x, F)
}

#[test]
fn outputs_are_revealed_to_the_client_only() {
    let mut b = builder();
    let x = b.input("x", Party::Client, &[4], F);
    let w = b.weight("w", Party::Server, false, &[4], F);
    let s = b.add(x, w);
    let o = b.output("s", s, Party::Client, &[4], F);
    assert_eq!(b.kind(o), Kind::Private(Party::Client));
    let prog = b.finish();
    let r = run(&prog, vec![("x", vec![1.0; 4])], vec![("w", vec![2.0; 4])], false);
    assert_eq!(out(&r, "s"), &[3.0; 4]);
    // The client sent nothing in the body: the reveal goes from the server to the client only.
    assert_eq!(r.client.body.sent, veil_isa::cost::FRAME_HEADER);
}

#[test]
fn narrow_openings_products_squares_and_comparisons() {
    // Openings modulo 2^w for w < 64 cost w bits per element; they are exact (up to the
    // truncation ulp) whenever |x| < 2^(w-2) ring units.
    both_transports(|tcp| {
        let mut rng = Rng(11);
        let n = 400usize;
        let mut xs = edge_values(100.0);
        xs.extend(rng.vec(n - xs.len(), -100.0, 100.0));
        let ys = rng.vec(n, -3.0, 3.0);
        let zs = rng.vec(n, -0.2, 0.2);
        let mut b = builder();
        let x = b.input("x", Party::Client, &[n as u32], F);
        let y = b.input("y", Party::Client, &[n as u32], F);
        let z = b.input("z", Party::Client, &[n as u32], F);
        let yy = b.mul(y, 0, y, 0, 1); // y² at 2f
        let zz = b.mul(z, 0, z, 0, 1); // z² at 2f, |z²| < 0.04
        let mx = b.masked_open_w(x, 0, 32);
        let my = b.masked_open_w(yy, F, 48);
        let mz = b.masked_open_w(zz, F, 32); // (w - t) = 16: the cross term of squares appears
        let p = b.mul_masked(&mx, &my, 1); // x·(y² >> f)
        let sx = b.square_masked(&mx);
        let sz = b.square_masked(&mz);
        let pz = b.mul_masked(&mz, &my, 1);
        let bit = b.drelu(&mx, 0);
        let bit_a = b.b2a(bit);
        let sel = b.select(bit, &my);
        let t = b.to_share(&my);
        for (name, v, f) in [
            ("p", p, 2 * F),
            ("sx", sx, 2 * F),
            ("sz", sz, 2 * F),
            ("pz", pz, 2 * F),
            ("bit", bit_a, 0),
            ("sel", sel, F),
            ("t", t, F),
        ] {
            b.output(name, v, Party::Client, &[n as u32], f);
        }
        let prog = b.finish();
        let widths: Vec<u8> = prog
            .body
            .iter()
            .filter_map(|i| match i {
                veil_isa::Instr::Open { bits, .. } => Some(*bits),
                _ => None,
            })
            .collect();
        assert!(
            widths.contains(&32) && widths.contains(&48),
            "narrow openings are emitted: {widths:?}"
        );
        let r =
            run(&prog, vec![("x", xs.clone()), ("y", ys.clone()), ("z", zs.clone())], vec![], tcp);
        let q = |v: f64| (v * 65536.0).round() / 65536.0;
        for i in 0..n {
            let (x, y, z) = (q(xs[i]), q(ys[i]), q(zs[i]));
            // The truncated openings are exact to within 1.5 ulp each (`TRUNC`).
            let (y2, z2) = (y * y, z * z);
            let ok = |got: f64, want: f64, slack: f64| (got - want).abs() <= slack + 1e-12;
            assert!(ok(out(&r, "t")[i], y2, TRUNC), "t {} vs {y2}", out(&r, "t")[i]);
            assert!(ok(out(&r, "p")[i], x * y2, TRUNC * x.abs()), "p");
            assert!(ok(out(&r, "sx")[i], x * x, 0.0), "sx");
            assert!(
                ok(out(&r, "sz")[i], z2 * z2, 2.0 * TRUNC * z2.abs() + TRUNC * TRUNC),
                "sz {} vs {}",
                out(&r, "sz")[i],
                z2 * z2
            );
            let pz_slack = TRUNC * (z2.abs() + y2.abs()) + TRUNC * TRUNC;
            assert!(ok(out(&r, "pz")[i], z2 * y2, pz_slack), "pz");
            if x.abs() >= 256.0 * ULP {
                assert_eq!(out(&r, "bit")[i], (x >= 0.0) as u8 as f64);
                assert!(ok(out(&r, "sel")[i], if x >= 0.0 { y2 } else { 0.0 }, TRUNC));
            }
        }
    });
}

/// Products of narrow openings whose dealer corrections for the wrap terms are cut by `cut`
/// bits below what the wrap factor needs (0: as the builder emits them).
fn narrow_products(n: usize, cut: u8) -> veil_isa::Program {
    let mut b = builder();
    let y = b.input("y", Party::Client, &[n as u32], F);
    let z = b.input("z", Party::Client, &[n as u32], F);
    let yy = b.mul(y, 0, y, 0, 1);
    let zz = b.mul(z, 0, z, 0, 1);
    let my = b.masked_open_w(yy, F, 48);
    let mz = b.masked_open_w(zz, F, 32);
    let pz = b.mul_masked(&mz, &my, 1);
    let sz = b.square_masked(&mz);
    b.output("pz", pz, Party::Client, &[n as u32], 2 * F);
    b.output("sz", sz, Party::Client, &[n as u32], 2 * F);
    let mut prog = b.finish();
    for ins in prog.body.iter_mut() {
        if let veil_isa::Instr::DProd { bits, .. } = ins {
            if *bits < 64 {
                *bits -= cut;
            }
        }
    }
    prog
}

#[test]
fn narrow_dealer_words_are_as_wide_as_the_wrap_factor_needs() {
    // The dealer sends only the low bits of a wrap term's correction (`dprod` with bits < 64):
    // exact as emitted, and one bit fewer is already wrong (the negative control).
    let n = 400;
    let mut rng = Rng(12);
    let ys = rng.vec(n, -3.0, 3.0);
    let zs = rng.vec(n, -0.2, 0.2);
    let q = |v: f64| (v * 65536.0).round() / 65536.0;
    let errors = |cut: u8| {
        let prog = narrow_products(n, cut);
        let narrow: Vec<u8> = prog
            .body
            .iter()
            .filter_map(|i| match i {
                veil_isa::Instr::DProd { bits, .. } if *bits < 64 => Some(*bits),
                _ => None,
            })
            .collect();
        assert!(!narrow.is_empty(), "narrow dealer words are emitted");
        let r = run(&prog, vec![("y", ys.clone()), ("z", zs.clone())], vec![], false);
        if cut == 0 {
            check_costs(&prog, &r);
        }
        (0..n)
            .filter(|&i| {
                let (y2, z2) = (q(ys[i]) * q(ys[i]), q(zs[i]) * q(zs[i]));
                let slack = TRUNC * (z2.abs() + y2.abs()) + 2.0 * TRUNC * TRUNC + 1e-12;
                (out(&r, "pz")[i] - z2 * y2).abs() > slack
                    || (out(&r, "sz")[i] - z2 * z2).abs() > 2.0 * TRUNC * z2.abs() + slack
            })
            .count()
    };
    assert_eq!(errors(0), 0, "narrow dealer words as emitted are exact");
    let wrong = errors(1);
    assert!(wrong > n / 10, "one bit fewer must break products: {wrong} of {n} wrong");
}
