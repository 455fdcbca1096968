//! JIT benchmark.
//!
//! 1. Kernel throughput on 128×3072 elements: the local work after a truncation opening
//!    (`trunc_post`, then `c2 - s`, then `+ mask`, as the builder emits it) fused by the JIT
//!    (i64x2 and scalar code), the same three instructions interpreted, and a hand-written
//!    Rust loop computing the same outputs; and the local matrix product at BERT-base shapes.
//! 2. With `--program FILE.vbc` (e.g. BERT-base, one layer, 128 tokens): both parties' local
//!    compute time (every body instruction except exchanges and dealer draws) and its
//!    elementwise part, with and without the JIT, and the JIT's compile time.
//!
//! `cargo bench -p veil-vm --bench jit [-- --reps N] [-- --program FILE.vbc [--compile-only]]`
//! (`--program` takes a path from the `vm/` directory, or an absolute one).

use std::time::{Duration, Instant};
use veil_isa::{Buf, BufDecl, Instr, Kind, Party, Program, Tag};
use veil_vm::jit::{self, Jit};
use veil_vm::material::Material;
use veil_vm::net::local::LocalTransport;
use veil_vm::testdata::xorshift_words;
use veil_vm::{run_session, PartyData, PartyVm, RunOptions, Values};

const N: u32 = 128 * 3072;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The post-opening chain of a truncation, for the client: buffers c (public, opened),
/// rhi, m (shares), mask (share); output y = (c2 - s) + mask (c2, pk, s, t are temporaries).
fn trunc_program() -> Program {
    let mut p = Program { frac_bits: 16, ..Program::default() };
    let kinds = [
        Kind::Public, // 0 c
        Kind::Share,  // 1 rhi
        Kind::Share,  // 2 m
        Kind::Share,  // 3 mask
        Kind::Public, // 4 c2
        Kind::Public, // 5 pk
        Kind::Share,  // 6 s
        Kind::Share,  // 7 t
        Kind::Share,  // 8 y
    ];
    for kind in kinds {
        p.buffers.push(BufDecl { kind, len: N });
    }
    let b = Buf;
    p.tags.push(Tag { layer: "bench".into(), op: "trunc".into() });
    p.body = vec![
        Instr::TruncPost { c2: b(4), pk: b(5), s: b(6), c: b(0), rhi: b(1), m: b(2), t: 16, w: 64 },
        Instr::Sub { d: b(7), a: b(4), b: b(6), inner: 1 },
        Instr::Add { d: b(8), a: b(7), b: b(3), inner: 1 },
    ];
    // Later full overwrites of the temporaries, as in real programs, so that only `y` is
    // live after the chain (these sums are not part of the measurement).
    for t in 4..8 {
        let a = if t < 6 { b(0) } else { b(1) };
        p.body.push(Instr::Sum { d: b(t), a, outer: N, mid: 1, inner: 1 });
    }
    p.body_tags = vec![0; p.body.len()];
    veil_isa::validate(&p).expect("valid");
    p
}

/// The same outputs, hand-written.
fn rust_loop(y: &mut [u64], c: &[u64], rhi: &[u64], m: &[u64], mask: &[u64]) {
    let (t, w) = (16u32, 64u32);
    let off = 1u64 << (w - 2 - t);
    let k = 1u64 << (w - t);
    for i in 0..y.len() {
        let cc = c[i];
        let c2 = (cc >> t).wrapping_sub(off);
        let p = if (cc >> (w - 1)) & 1 == 0 { k } else { 0 };
        let s = rhi[i].wrapping_sub(p.wrapping_mul(m[i]));
        y[i] = c2.wrapping_sub(s).wrapping_add(mask[i]);
    }
}

fn throughput(reps: usize) {
    let p = trunc_program();
    let bufs: Vec<Vec<u64>> =
        (0..p.buffers.len()).map(|i| xorshift_words(N as usize, i as u64 + 1)).collect();
    let gelem = |d: Duration| N as f64 / d.as_secs_f64() / 1e9;
    println!(
        "## Kernel throughput: truncation post-processing chain, {N} elements, median of {reps}\n"
    );
    println!("| variant | time | G elements/s | vs Rust loop |");
    println!("|---|---|---|---|");

    let mut y = vec![0u64; N as usize];
    let rust = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                rust_loop(&mut y, &bufs[0], &bufs[1], &bufs[2], &bufs[3]);
                std::hint::black_box(&y);
                t.elapsed()
            })
            .collect(),
    );
    let mut rows = vec![("hand-written Rust loop".to_string(), rust)];
    let mut slots: Vec<veil_vm::Slot> = bufs.iter().cloned().map(veil_vm::Slot::Own).collect();
    for simd in [true, false] {
        let j = Jit::new(&p, Party::Client, simd).expect("jit");
        let k = &j.body.plan.kernels[0];
        let f = j.body.fns[0].expect("compiles");
        assert_eq!(j.body.plan.kernels.len(), 1, "one fused kernel");
        let d = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    assert!(jit::run(k, f, &mut slots));
                    t.elapsed()
                })
                .collect(),
        );
        assert_eq!(&slots[8][..], &y[..], "the kernel computes what the Rust loop computes");
        let name = if simd { "JIT kernel (i64x2)" } else { "JIT kernel (scalar)" };
        rows.push((name.to_string(), d));
    }
    let interp = median(
        (0..reps)
            .map(|_| {
                let (t, _peer) = LocalTransport::pair();
                let material = Material::new(Party::Client, [1; 16], None);
                let mut vm =
                    PartyVm::new(&p, Party::Client, material, Box::new(t), 1 << 32).expect("vm");
                vm.set_jit(false);
                // The second run, on buffers already paged in (as the kernels above are).
                vm.run_body().expect("body");
                let first = vm.report().elementwise_time;
                vm.run_body().expect("body");
                vm.report().elementwise_time - first
            })
            .collect(),
    );
    rows.push(("interpreter (3 instructions)".to_string(), interp));
    for (name, d) in rows {
        println!(
            "| {name} | {} | {:.2} | {:.2}× |",
            ms(d),
            gelem(d),
            rust.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!();
}

/// The local matrix product at BERT-base shapes (both of the machine's cores when free).
fn matmul_throughput(reps: usize) {
    println!("## Local matmul in Z_2^64, median of {reps}\n");
    println!("| m×k · k×n | time | G multiply-adds/s |");
    println!("|---|---|---|");
    // 128 rows: a full sequence; 56 and 2: sequences after token pruning (few rows: the
    // product is bound by reading the weights).
    let shapes = [
        (128, 768, 768),
        (128, 3072, 768),
        (128, 768, 3072),
        (128, 64, 128),
        (56, 768, 3072),
        (2, 768, 3072),
    ];
    for (m, k, n) in shapes {
        let a = xorshift_words(m * k, 3);
        let b = xorshift_words(k * n, 4);
        let mut d = vec![0u64; m * n];
        let t = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    veil_vm::kernels::matmul(&mut d, &a, &b, 1, m, k, n);
                    std::hint::black_box(&d);
                    t.elapsed()
                })
                .collect(),
        );
        let g = (m * k * n) as f64 / t.as_secs_f64() / 1e9;
        println!("| {m}×{k} · {k}×{n} | {} | {g:.2} |", ms(t));
    }
    println!();
}

/// Random inputs and weights for every declaration (timing does not depend on the values).
fn party_data(p: &Program) -> (PartyData, PartyData) {
    let mut c = PartyData::default();
    let mut s = PartyData::default();
    for (i, io) in p.inputs.iter().chain(&p.weights).enumerate() {
        let n: usize = io.shape.iter().map(|&d| d as usize).product();
        let v: Vec<f32> = xorshift_words(n, i as u64 + 7)
            .iter()
            .map(|&x| (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        let entry = (io.name.clone(), Values::F32(v));
        let is_input = i < p.inputs.len();
        match (io.party, is_input) {
            (Party::Client, true) => c.inputs.push(entry),
            (Party::Client, false) => c.weights.push(entry),
            (Party::Server, true) => s.inputs.push(entry),
            (Party::Server, false) => s.weights.push(entry),
        }
    }
    (c, s)
}

fn program_bench(path: &str, reps: usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let p = Program::from_bytes(&bytes).expect("a veil program");
    let (c, s) = party_data(&p);
    println!("## Local compute of `{path}`, both parties, median of {reps} (in-process, prefetched dealer)\n");
    let compile: Vec<(Duration, usize, usize)> = (0..reps)
        .map(|_| {
            let j = Jit::new(&p, Party::Client, true).expect("jit");
            (j.compile_time, j.kernels, j.distinct)
        })
        .collect();
    let (_, kernels, distinct) = compile[0];
    println!(
        "JIT compile (client, both sections): {} for {kernels} kernels, {distinct} distinct signatures\n",
        ms(median(compile.iter().map(|x| x.0).collect()))
    );
    if std::env::args().any(|a| a == "--compile-only") {
        return;
    }
    println!(
        "| | client local | client elementwise | server local | server elementwise | client body |"
    );
    println!("|---|---|---|---|---|---|");
    // Alternate the two modes so that load from other processes affects both alike.
    let mut runs: [Vec<veil_vm::RunResult>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..reps {
        for jit in [false, true] {
            let opts =
                RunOptions { jit, timeout: Duration::from_secs(600), ..RunOptions::default() };
            runs[jit as usize].push(run_session(&p, &c, &s, &opts).expect("session runs"));
        }
    }
    let mut res = Vec::new();
    for jit in [false, true] {
        let runs = &runs[jit as usize];
        let med =
            |f: &dyn Fn(&veil_vm::RunResult) -> Duration| median(runs.iter().map(f).collect());
        let row = [
            med(&|r| r.client.local_time),
            med(&|r| r.client.elementwise_time),
            med(&|r| r.server.local_time),
            med(&|r| r.server.elementwise_time),
            med(&|r| r.client.body_time),
        ];
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            if jit { "JIT" } else { "interpreter" },
            ms(row[0]),
            ms(row[1]),
            ms(row[2]),
            ms(row[3]),
            ms(row[4])
        );
        res.push(row);
    }
    let r = |i: usize| res[0][i].as_secs_f64() / res[1][i].as_secs_f64();
    println!(
        "| interpreter / JIT | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
        r(0),
        r(1),
        r(2),
        r(3),
        r(4)
    );
    if let Some(r) = runs[1].first().filter(|r| !r.client.lengths.is_empty()) {
        println!(
            "Pruned lengths {:?}; with the JIT, the client's instances after each `setlen` took {} \
             to plan and compile (median, inside its body time).\n",
            r.client.lengths,
            ms(median(runs[1].iter().map(|r| r.client.jit_instance_time).collect()))
        );
    }
    op_breakdown(&runs);
}

/// Per instruction name, both parties' time summed, median over the runs of each mode.
fn op_breakdown(runs: &[Vec<veil_vm::RunResult>; 2]) {
    let mut names: Vec<&'static str> = Vec::new();
    for r in runs.iter().flatten() {
        for rep in [&r.client, &r.server] {
            for &k in rep.time_by_op.keys() {
                if !names.contains(&k) {
                    names.push(k);
                }
            }
        }
    }
    let stat = |mode: usize, name: &str| {
        let t = median(
            runs[mode]
                .iter()
                .map(|r| {
                    [&r.client, &r.server]
                        .iter()
                        .filter_map(|rep| rep.time_by_op.get(name))
                        .map(|x| x.0)
                        .sum()
                })
                .collect(),
        );
        let count: u64 = runs[mode]
            .first()
            .map(|r| r.client.time_by_op.get(name).map_or(0, |x| x.1))
            .unwrap_or(0);
        (t, count)
    };
    let mut rows: Vec<_> = names.iter().map(|&n| (n, stat(0, n), stat(1, n))).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0 + r.2 .0));
    println!("Per instruction, both parties summed (median); exchanges include waiting:\n");
    println!("| instruction | count (client) | interpreter | JIT |");
    println!("|---|---|---|---|");
    for (name, (ti, ci), (tj, cj)) in rows {
        let count = if ci == cj { ci.to_string() } else { format!("{ci} / {cj}") };
        println!("| {name} | {count} | {} | {} |", ms(ti), ms(tj));
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let reps: usize = arg("--reps").and_then(|s| s.parse().ok()).unwrap_or(7);
    throughput(reps);
    matmul_throughput(reps);
    match arg("--program") {
        Some(path) => program_bench(path, reps),
        None => println!(
            "(pass `-- --program target/bert-base-layer.vbc` for the BERT-base layer; make it with \
             `cargo run --release -- compile examples/models/bert-base.veil --model bert_base_layer \
             --random-weights 1 -o target/bert-base-layer.vbc`)"
        ),
    }
}
