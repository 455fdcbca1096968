//! Protocol benchmark: each protocol on 128×3072 elements (matmuls on 128×768 · 768×768),
//! three roles in this process, parties over TCP on loopback, dealer material prefetched.
//! Prints online bytes per element, rounds, median online wall time, and the ratio of online
//! bytes to the dealer-model minimum (one opening, both ways, of each fresh operand).
//!
//! `cargo bench -p veil-vm --bench protocols [-- --reps N] [-- --memory]`

use std::time::Duration;
use veil_isa::builder::ProgramBuilder;
use veil_isa::cost::program_cost;
use veil_isa::{Party, Program};
use veil_vm::{run_session, PartyData, RunOptions, Values};

const F: u8 = 16;
const ROWS: u32 = 128;
const COLS: u32 = 3072;
const N: u32 = ROWS * COLS;

struct Case {
    name: &'static str,
    prog: Program,
    elements: u64,
    /// Elements of fresh operands that the dealer model must open at least once.
    fresh: u64,
    client: Vec<(String, Values)>,
    server: Vec<(String, Values)>,
}

fn data(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    veil_vm::testdata::xorshift_words(n, seed)
        .into_iter()
        .map(|s| ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale as f32)
        .collect()
}

/// A program whose body is `f` applied to one or two client inputs of `n` elements, with the
/// result's last element revealed (so the reveal does not dominate the measurement).
fn unary(
    name: &'static str,
    fresh_per_elem: u64,
    f: impl Fn(&mut ProgramBuilder, veil_isa::Buf) -> veil_isa::Buf,
) -> Case {
    let mut b = ProgramBuilder::new(F);
    b.set_tag("bench", name);
    let x = b.input("x", Party::Client, &[N], F);
    let y = f(&mut b, x);
    let len = b.len(y);
    let last = b.view(y, len - 1, &[1], &[1]);
    b.output("y", last, Party::Client, &[1], F);
    Case {
        name,
        prog: b.finish(),
        elements: N as u64,
        fresh: fresh_per_elem * N as u64,
        client: vec![("x".into(), Values::F32(data(N as usize, 1, 8.0)))],
        server: vec![],
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        unary("open (masked)", 1, |b, x| {
            let m = b.masked_open(x, 0);
            b.to_share(&m)
        }),
        unary("mul (beaver, 2 fresh)", 2, |b, x| {
            let y = b.add_imm(x, 1 << 16);
            b.mul(x, 0, y, 0, 1)
        }),
        unary("square", 1, |b, x| b.square(x, 0)),
        unary("truncation", 1, |b, x| b.trunc(x, F)),
        unary("drelu -> arith bit", 1, |b, x| {
            let m = b.masked_open(x, 0);
            let bit = b.drelu(&m, 0);
            b.b2a(bit)
        }),
        unary("relu", 1, |b, x| b.relu(x, 0)),
        unary("max over rows of 128", 1, |b, x| {
            let t = b.transpose(x, &[ROWS, COLS], &[1, 0]);
            b.max_rows(t, COLS, ROWS)
        }),
    ];
    // The second operand of mul is a local function of x, so it is a fresh opening too.
    let (m, k, n) = (128u32, 768u32, 768u32);
    for (name, constant) in [
        ("matmul 128x768·768x768 (both secret)", false),
        ("matmul 128x768·768x768 (constant W)", true),
    ] {
        let mut b = ProgramBuilder::new(F);
        b.set_tag("bench", name);
        let x = b.input("x", Party::Client, &[m, k], F);
        let (y, server) = if constant {
            let w = b.weight("w", Party::Server, false, &[k, n], F);
            (
                b.matmul_priv(x, w, 1, m, k, n),
                vec![("w".to_string(), Values::F32(data((k * n) as usize, 2, 0.05)))],
            )
        } else {
            let w = b.input("w", Party::Client, &[k, n], F);
            (b.matmul(x, w, 1, m, k, n), vec![])
        };
        let last = b.view(y, m * n - 1, &[1], &[1]);
        b.output("y", last, Party::Client, &[1], 2 * F);
        let mut client = vec![("x".to_string(), Values::F32(data((m * k) as usize, 3, 1.0)))];
        if !constant {
            client.push(("w".to_string(), Values::F32(data((k * n) as usize, 2, 0.05))));
        }
        v.push(Case {
            name,
            prog: b.finish(),
            elements: (m * n) as u64,
            fresh: if constant { (m * k) as u64 } else { (m * k + k * n) as u64 },
            client,
            server,
        });
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("veil protocol benchmark: {ROWS}x{COLS} = {N} elements, fixed point f={F}, median of {reps} runs, TCP loopback\n");
    println!("| protocol | online B/elem | rounds | online time (median) | dealer B/elem | online / dealer-model minimum |");
    println!("|---|---|---|---|---|---|");
    for case in cases() {
        let cost = program_cost(&case.prog);
        // Exclude the one-element reveal from the per-element figures.
        let reveal = 8 + 2 * veil_isa::cost::FRAME_HEADER;
        let online = cost.body.online() - reveal;
        let min = 16 * case.fresh;
        let mut times = Vec::new();
        for _ in 0..reps {
            let c = PartyData { inputs: case.client.clone(), weights: vec![] };
            let s = PartyData { inputs: vec![], weights: case.server.clone() };
            let opts = RunOptions {
                tcp: true,
                timeout: Duration::from_secs(600),
                ..RunOptions::default()
            };
            let r = run_session(&case.prog, &c, &s, &opts).expect("benchmark session runs");
            assert_eq!(
                r.client.body.sent + r.server.body.sent,
                cost.body.online(),
                "measured = predicted"
            );
            times.push(r.client.body_time.max(r.server.body_time));
        }
        times.sort();
        let med = times[times.len() / 2];
        println!(
            "| {} | {:.2} | {} | {:.1} ms | {:.2} | {:.2} |",
            case.name,
            online as f64 / case.elements as f64,
            cost.body.rounds - 1,
            med.as_secs_f64() * 1e3,
            cost.body.dealer as f64 / case.elements as f64,
            online as f64 / min as f64
        );
    }
    println!("\nSetup (once per program load) of the constant-W matmul: the owner sends W + B, 8 B per weight element.");
}
