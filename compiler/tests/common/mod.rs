//! Running a compiled model two-party inside a test (dealer, client and server in threads).

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod onnx;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use veil_compiler::compile::{client_run, Compiled};
use veil_compiler::ir::{Data, Tensor};
use veil_vm::{run_session, PartyData, RunOptions, RunResult, Values};

/// The workspace root (examples/, tests/fixtures/).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The largest elementwise |a − b|.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// A tensor as the VM's input values.
pub fn values(t: &Tensor) -> Values {
    match &t.data {
        Data::F32(v) => Values::F32(v.clone()),
        Data::I64(v) => Values::I64(v.clone()),
        _ => Values::F64(t.to_f64_vec()),
    }
}

/// Runs `c` on the model inputs `inputs` (over TCP loopback when `tcp`): the client's
/// preprocessing, the session, and the outputs as the client assembles them.
pub fn run_compiled(
    c: &Compiled,
    inputs: &HashMap<String, Tensor>,
    tcp: bool,
) -> Result<(RunResult, Vec<(String, Tensor)>), String> {
    run_compiled_with(c, inputs, &RunOptions { tcp, ..RunOptions::default() })
}

/// [`run_compiled`] with explicit run options (JIT on or off, fixed dealer seeds).
pub fn run_compiled_with(
    c: &Compiled,
    inputs: &HashMap<String, Tensor>,
    opts: &RunOptions,
) -> Result<(RunResult, Vec<(String, Tensor)>), String> {
    let (feeds, own) = client_run::preprocess(&c.client, inputs).map_err(|e| e.to_string())?;
    let client = PartyData {
        inputs: feeds.iter().map(|(n, t)| (n.clone(), values(t))).collect(),
        weights: vec![],
    };
    let server = PartyData {
        weights: c.server_weights.iter().map(|(n, t)| (n.clone(), values(t))).collect(),
        inputs: vec![],
    };
    let r = run_session(&c.program, &client, &server, opts).map_err(|e| e.to_string())?;
    let revealed: Vec<_> =
        r.outputs.iter().map(|o| (o.name.clone(), o.shape.clone(), o.data.clone())).collect();
    let outs = client_run::assemble(&c.client, &revealed, &own).map_err(|e| e.to_string())?;
    Ok((r, outs))
}

/// Asserts the compiler's predicted cost of `c` equals what the run `r` measured: rounds,
/// each party's bytes, the setup's and the dealer's (`what` names the case in a failure).
pub fn assert_cost_predicted(c: &Compiled, r: &RunResult, what: &str) {
    let pc = veil_isa::cost::program_cost(&c.program);
    assert_eq!(r.client.body.rounds, pc.body.rounds, "{what}: predicted rounds");
    assert_eq!(r.client.body.sent, pc.body.sent[0], "{what}: predicted client bytes");
    assert_eq!(r.server.body.sent, pc.body.sent[1], "{what}: predicted server bytes");
    assert_eq!(
        r.client.setup.sent + r.server.setup.sent,
        pc.setup.online(),
        "{what}: predicted setup"
    );
    // The dealer also sends each party its 8-byte seed frame.
    assert_eq!(
        r.dealer_bytes,
        pc.setup.dealer + pc.body.dealer + 8,
        "{what}: predicted dealer bytes"
    );
}

/// A graph computing `body` (a DSL expression in `x`, after the `import` lines `imports`) on a
/// secret `x` of `shape`: the client's input plus a zero the server holds, so both parties
/// hold it.
pub fn dsl_body_graph(imports: &str, body: &str, shape: Vec<usize>) -> veil_compiler::ir::Graph {
    use veil_compiler::ir::{DType, Graph, Op, TensorType};
    let mut l = veil_compiler::dsl::stdlib_loader();
    l.load_source("body_test.veil", format!("{imports}fn f(x) {{ {body} }}\n")).unwrap();
    let mut g = Graph::new("body_test");
    let ty = TensorType::new(DType::F32, shape);
    let x = g.add_input("x", ty.clone());
    let w = g.add_weight("server_part", Tensor::zeros(&ty));
    let x = g.add_node("shared_x", Op::Add, &[x, w], "shared_x").unwrap();
    let y = veil_compiler::dsl::instantiate(&l, "f", &mut g, &[x], &[], "f").unwrap();
    g.outputs = vec![y];
    g
}
