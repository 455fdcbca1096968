//! The stdlib table: every approximation measured in the fixed-point simulator over its
//! declared domain (max absolute and relative error) and compiled to bytecode for its cost
//! (secret products, comparisons, rounds, online bytes). `stdlib/README.md` holds its output;
//! a test regenerates it and fails when the file is stale, so the figures are never typed.

use crate::backend::partition::Vis;
use crate::compile::{compile, CompileOptions};
use crate::dsl::{instantiate, stdlib_loader};
use crate::fixed::{simulate, SimOptions};
use crate::ir::{DType, Graph, Op, Tensor, TensorType, ValueDef};
use crate::weights::SplitMix;
use std::collections::HashMap;
use std::fmt::Write;
use veil_stdlib::{Shape, StdFn};

/// Why a stdlib function could not be measured: names the function.
#[derive(Debug, thiserror::Error)]
pub enum StdlibError {
    /// Its call does not load or instantiate.
    #[error("{func}: {error}")]
    Dsl {
        /// The function.
        func: &'static str,
        /// The DSL's error.
        error: crate::dsl::DslError,
    },
    /// The measuring graph's input node does not fit (a bug).
    #[error("{func}: node `shared_x`: {error}")]
    Shape {
        /// The function.
        func: &'static str,
        /// The shape error.
        error: crate::ir::shape::ShapeError,
    },
    /// The fixed-point simulation failed (names the node).
    #[error("{func}: {error}")]
    Simulate {
        /// The function.
        func: &'static str,
        /// The simulator's error.
        error: crate::eval::EvalError,
    },
    /// Compiling it failed.
    #[error("{func}: {error}")]
    Compile {
        /// The function.
        func: &'static str,
        /// The compiler's error.
        error: Box<crate::compile::CompileError>,
    },
}

/// Points per elementwise sweep.
pub const POINTS: usize = 4096;
/// Rows per row-function sample (each of `veil_stdlib::ROW` entries).
pub const ROWS: usize = 32;
/// Relative errors are taken where |reference| ≥ this (near zeros they are meaningless).
pub const REL_FLOOR: f64 = 1.0 / 64.0;

/// One measured stdlib function.
#[derive(Clone, Debug)]
pub struct Row {
    /// The function.
    pub func: StdFn,
    /// Max |approx − reference| over the samples.
    pub max_abs: f64,
    /// Max |reference| over the samples (the scale of `max_abs`).
    pub max_ref: f64,
    /// Max |approx − reference| / |reference| over samples with |reference| ≥ [`REL_FLOOR`].
    pub max_rel: f64,
    /// Secret × secret products in the function (each over its whole operand).
    pub products: usize,
    /// Comparisons (sign tests and row maxima).
    pub comparisons: usize,
    /// Communication rounds of one call (the final reveal not counted).
    pub rounds: u64,
    /// Online bytes per input element, both directions.
    pub bytes_per_element: f64,
}

/// The graph of `f` applied to an input `x` of `shape` (through its `call` expression). `x`
/// is the client's input plus a server weight of zeros (`server_part`), so that compiled the
/// whole function runs on secret shares, as it does inside a model; the simulator and the
/// reference evaluator see just `x`.
pub fn function_graph(f: &StdFn, shape: Vec<usize>) -> Result<Graph, StdlibError> {
    let dsl = |error| StdlibError::Dsl { func: f.name, error };
    let mut l = stdlib_loader();
    let src = format!("import {};\nfn measured(x) {{ {} }}\n", f.module, f.call);
    l.load_source("measure.veil", src).map_err(dsl)?;
    let mut g = Graph::new(f.name);
    let ty = TensorType::new(DType::F32, shape);
    let x = g.add_input("x", ty.clone());
    let w = g.add_weight("server_part", Tensor::zeros(&ty));
    let x = g
        .add_node("shared_x", Op::Add, &[x, w], "shared_x")
        .map_err(|error| StdlibError::Shape { func: f.name, error })?;
    let y = instantiate(&l, "measured", &mut g, &[x], &[], f.name).map_err(dsl)?;
    g.outputs = vec![y];
    Ok(g)
}

/// Deterministic samples of `f`'s domain: an even (or logarithmic) sweep for elementwise
/// functions; for row functions, uniform rows each scaled by 2^(−4·r/ROWS), so rows of every
/// spread from the full domain down to 1/16 of it are covered.
pub fn samples(f: &StdFn) -> (Vec<usize>, Vec<f64>) {
    let (lo, hi) = f.domain;
    match f.shape {
        Shape::Elementwise => {
            let xs = (0..POINTS)
                .map(|i| {
                    let t = i as f64 / (POINTS - 1) as f64;
                    if f.log_sweep {
                        lo * (hi / lo).powf(t)
                    } else {
                        lo + (hi - lo) * t
                    }
                })
                .collect();
            (vec![POINTS], xs)
        }
        Shape::Rows(n) => {
            let mut rng = SplitMix(7);
            let mut xs = Vec::with_capacity(ROWS * n);
            for r in 0..ROWS {
                let scale = 2f64.powf(-4.0 * r as f64 / ROWS as f64);
                for _ in 0..n {
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    xs.push((lo + (hi - lo) * u) * scale);
                }
            }
            (vec![ROWS, n], xs)
        }
    }
}

/// Measures `f` at `frac_bits` fractional bits.
pub fn measure(f: &StdFn, frac_bits: u8) -> Result<Row, StdlibError> {
    let (shape, xs) = samples(f);
    let g = function_graph(f, shape.clone())?;
    let x32: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
    // The reference sees exactly the inputs the approximation sees: f32, then rounded to the
    // fixed-point grid (at the octave functions' low end, 1.5 units of 2^-16 is held as 2, a
    // 15% change of 1/√x that no approximation could undo).
    let grid = (1u64 << frac_bits) as f64;
    let xs: Vec<f64> = x32.iter().map(|&v| (v as f64 * grid).round() / grid).collect();
    let inputs = HashMap::from([("x".to_string(), Tensor::f32(shape, x32))]);
    let opts = SimOptions { frac_bits, mask_value: None };
    let got = simulate(&g, &inputs, &opts)
        .map_err(|error| StdlibError::Simulate { func: f.name, error })?;
    let got = got[0].to_f64_vec();
    let want = (f.reference)(&xs);
    let (mut max_abs, mut max_rel, mut max_ref) = (0f64, 0f64, 0f64);
    for (a, b) in got.iter().zip(&want) {
        let e = (a - b).abs();
        max_ref = max_ref.max(b.abs());
        max_abs = max_abs.max(e);
        if b.abs() >= REL_FLOOR {
            max_rel = max_rel.max(e / b.abs());
        }
    }
    let is_const = |v| matches!(g.values[v].def, ValueDef::Const(_));
    let (mut products, mut comparisons) = (0, 0);
    for &n in &g.order {
        let nd = &g.nodes[n];
        match nd.op {
            Op::Mul | Op::MatMul if !nd.args.iter().any(|&a| is_const(a)) => products += 1,
            Op::Drelu { .. } | Op::ReduceMax { .. } | Op::Max | Op::Min => comparisons += 1,
            _ => {}
        }
    }
    let numel = g.values[g.inputs[0]].ty.numel();
    let opts = CompileOptions { frac_bits, ..CompileOptions::default() };
    let c = compile(g, &|_| Vis::Server, &opts)
        .map_err(|e| StdlibError::Compile { func: f.name, error: Box::new(e) })?;
    let cost = veil_isa::cost::program_cost(&c.program);
    let reveal = u64::from(!c.program.outputs.is_empty());
    Ok(Row {
        func: *f,
        max_abs,
        max_ref,
        max_rel,
        products,
        comparisons,
        rounds: cost.body.rounds.saturating_sub(reveal),
        bytes_per_element: (cost.body.sent[0] + cost.body.sent[1]) as f64 / numel as f64,
    })
}

/// Measures every stdlib function.
pub fn measure_all(frac_bits: u8) -> Result<Vec<Row>, StdlibError> {
    veil_stdlib::ALL.iter().map(|f| measure(f, frac_bits)).collect()
}

/// The table in Markdown.
pub fn markdown(rows: &[Row], frac_bits: u8) -> String {
    let mut s = String::new();
    writeln!(
        s,
        "Measured by `veil stdlib` in the fixed-point simulator (Z_2^64, {frac_bits} fractional bits, \
         truncation where the compiled program truncates); {POINTS} points per elementwise sweep, \
         {ROWS} rows of {} (spreads from the whole domain to 1/16 of it) for row functions; relative \
         error where |reference| ≥ 1/64, the reference taken at the input rounded to {frac_bits} \
         fractional bits (what the program holds). Products and comparisons \
         count graph operations (each over its whole operand); rounds and bytes are from the \
         compiled bytecode's cost model (one call, the output's reveal excluded).\n",
        veil_stdlib::ROW
    )
    .unwrap();
    s.push_str("| function | call | domain | max abs err | max rel err | products | comparisons | rounds | online B/elem |\n");
    s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let f = &r.func;
        let dom = match f.shape {
            Shape::Elementwise => format!("[{}, {}]", f.domain.0, f.domain.1),
            Shape::Rows(n) => format!("rows of {n} in [{}, {}]", f.domain.0, f.domain.1),
        };
        writeln!(
            s,
            "| `{}` ({}) | `{}` | {dom} | {:.2e} | {:.2e} | {} | {} | {} | {:.0} |",
            f.name,
            f.module,
            f.call,
            r.max_abs,
            r.max_rel,
            r.products,
            r.comparisons,
            r.rounds,
            r.bytes_per_element
        )
        .unwrap();
    }
    s
}
