//! Shared helpers for the VM tests: deterministic test data, running a built program, and
//! checking measured costs against the prediction.
#![allow(dead_code)]

use veil_isa::builder::ProgramBuilder;
use veil_isa::cost::program_cost;
use veil_isa::Program;
use veil_vm::{run_session, PartyData, RunOptions, RunResult, Values};

/// Bytes of the dealer stream outside instruction corrections (the end-of-stream frame).
pub const DEALER_OVERHEAD: u64 = veil_isa::cost::FRAME_HEADER;

/// A small deterministic generator (xorshift64*), so tests need no RNG crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

pub const F: u8 = 16;
pub const ULP: f64 = 1.0 / 65536.0;
/// The error bound of a truncating opening: it drops the bits it truncates, and with them
/// the carry out of them, so its result is within 1.5 ulp of the exact quotient.
pub const TRUNC: f64 = 1.5 * ULP;

/// Runs a program with the client's inputs and the server's weights, in memory or over TCP,
/// and checks that the measured costs equal the prediction exactly.
pub fn run(
    prog: &Program,
    client: Vec<(&str, Vec<f64>)>,
    server: Vec<(&str, Vec<f64>)>,
    tcp: bool,
) -> RunResult {
    let c = PartyData {
        inputs: client.into_iter().map(|(n, v)| (n.to_string(), Values::F64(v))).collect(),
        weights: vec![],
    };
    let s = PartyData {
        weights: server.into_iter().map(|(n, v)| (n.to_string(), Values::F64(v))).collect(),
        inputs: vec![],
    };
    let opts = RunOptions { tcp, ..RunOptions::default() };
    let r = run_session(prog, &c, &s, &opts).expect("session runs");
    check_costs(prog, &r);
    r
}

/// The compiler-side prediction equals what the transports and the dealer measured.
pub fn check_costs(prog: &Program, r: &RunResult) {
    let pc = program_cost(prog);
    assert_eq!(r.client.setup.rounds, pc.setup.rounds, "setup rounds");
    assert_eq!(r.client.body.rounds, pc.body.rounds, "body rounds");
    assert_eq!(r.server.body.rounds, pc.body.rounds, "server body rounds");
    assert_eq!(r.client.setup.sent, pc.setup.sent[0], "client setup bytes");
    assert_eq!(r.server.setup.sent, pc.setup.sent[1], "server setup bytes");
    assert_eq!(r.client.body.sent, pc.body.sent[0], "client body bytes");
    assert_eq!(r.server.body.sent, pc.body.sent[1], "server body bytes");
    assert_eq!(r.client.body.received, pc.body.sent[1], "client received what the server sent");
    assert_eq!(r.dealer_bytes, pc.setup.dealer + pc.body.dealer + DEALER_OVERHEAD, "dealer bytes");
}

/// The output named `name`.
pub fn out<'a>(r: &'a RunResult, name: &str) -> &'a [f64] {
    &r.outputs.iter().find(|o| o.name == name).expect("output exists").data
}

/// A builder with the default fixed point.
pub fn builder() -> ProgramBuilder {
    ProgramBuilder::new(F)
}

/// Values that exercise the fixed-point edges: zero, ±1 ulp, ±1, and the given large magnitude.
pub fn edge_values(large: f64) -> Vec<f64> {
    vec![
        0.0,
        ULP,
        -ULP,
        1.0,
        -1.0,
        0.5,
        -0.5,
        large,
        -large,
        large / 3.0,
        -large / 7.0,
        2.0 * ULP,
        -3.0 * ULP,
    ]
}
