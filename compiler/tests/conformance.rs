//! ONNX's own backend node tests (tests/fixtures/onnx-node-tests, from onnx 1.23.2) through
//! import and the reference evaluator.
//!
//! Integer-typed and scalar graph inputs are specialised to the test's constants, because veil
//! compiles static shapes and fixed operator parameters while the node tests feed shape
//! operands (Reshape's shape, Slice's starts, Expand's shape) and scalar parameters (Clip's
//! bounds, Range's start/limit/delta) as inputs; other inputs stay inputs. Outputs are compared with ONNX's
//! suggested tolerance, |got − want| ≤ 1e-7 + 1e-3·|want|, integers and bools exactly.
//! A case is *unsupported* when veil rejects it on purpose (an operator, element type or
//! feature it does not implement, each named); any other failure, and any wrong answer of a
//! supported case, fails the test.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use veil_compiler::frontend::onnx::{import_bytes, tensor::from_proto, ImportError, ImportOptions};
use veil_compiler::ir::Tensor;
use veil_onnx_proto::{Message, ModelProto, TensorProto};

enum Outcome {
    Pass,
    Unsupported(String),
    Fail(String),
}

fn load_pb(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let t = TensorProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    from_proto(&t)
}

fn unsupported_reason(e: &ImportError) -> Option<String> {
    match e {
        ImportError::Unsupported { nodes, .. } => Some(format!(
            "operator {}",
            nodes.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>().join(", ")
        )),
        ImportError::Graph { msg, .. } | ImportError::Node { msg, .. } => {
            if let Some(i) = msg.find("unsupported element type ") {
                let d = msg[i + 25..].split([' ', ',', ')']).next().unwrap_or("?");
                Some(format!("element type {d}"))
            } else if msg.contains("is not a tensor") {
                Some("sequence/optional type".into())
            } else if msg.contains("not supported") {
                Some(format!("feature: {}", msg.split(':').next_back().unwrap_or(msg).trim()))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn run_case(dir: &Path) -> Outcome {
    let model_bytes = match std::fs::read(dir.join("model.onnx")) {
        Ok(b) => b,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let model = match ModelProto::decode(model_bytes.as_slice()) {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(format!("decode: {e}")),
    };
    let graph = model.graph.clone().unwrap_or_default();
    let data = dir.join("test_data_set_0");
    for i in &graph.input {
        let is_tensor = matches!(
            i.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(veil_onnx_proto::type_proto::Value::TensorType(_))
        );
        if !is_tensor {
            return Outcome::Unsupported("sequence/optional type".into());
        }
    }
    let inits: Vec<String> = graph.initializer.iter().filter_map(|t| t.name.clone()).collect();
    let real_inputs: Vec<String> =
        graph.input.iter().filter_map(|i| i.name.clone()).filter(|n| !inits.contains(n)).collect();
    let mut inputs = HashMap::new();
    let mut opts = ImportOptions::default();
    for (i, name) in real_inputs.iter().enumerate() {
        let p = data.join(format!("input_{i}.pb"));
        if !p.exists() {
            continue; // an optional input omitted by the test
        }
        let t = match load_pb(&p) {
            Ok(t) => t,
            Err(e) => {
                return if e.contains("unsupported element type") {
                    Outcome::Unsupported(format!("element type in test data: {e}"))
                } else {
                    Outcome::Fail(e)
                }
            }
        };
        if t.dtype.is_int() || t.shape.is_empty() {
            opts.const_inputs.insert(name.clone(), t);
        } else {
            inputs.insert(name.clone(), t);
        }
    }
    let g = match import_bytes(&model_bytes, &dir.display().to_string(), &opts) {
        Ok(g) => g,
        Err(e) => {
            return match unsupported_reason(&e) {
                Some(r) => Outcome::Unsupported(r),
                None => Outcome::Fail(format!("import: {e}")),
            }
        }
    };
    let outs = match veil_compiler::eval::run(&g, &inputs) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(format!("eval: {e}")),
    };
    for (i, got) in outs.iter().enumerate() {
        let want = match load_pb(&data.join(format!("output_{i}.pb"))) {
            Ok(t) => t,
            Err(e) => {
                return if e.contains("unsupported element type") {
                    Outcome::Unsupported(format!("element type in test data: {e}"))
                } else {
                    Outcome::Fail(e)
                }
            }
        };
        if got.shape != want.shape || got.dtype != want.dtype {
            return Outcome::Fail(format!("output {i}: got {} want {}", got.ty(), want.ty()));
        }
        let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
        let exact = !want.dtype.is_float();
        for (k, (&a, &b)) in g.iter().zip(&w).enumerate() {
            let ok = if exact {
                a == b
            } else {
                (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-7 + 1e-3 * b.abs()
            };
            if !ok {
                return Outcome::Fail(format!("output {i} element {k}: got {a}, want {b}"));
            }
        }
    }
    Outcome::Pass
}

#[test]
fn onnx_node_conformance() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx-node-tests");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let (mut pass, mut fails) = (0, Vec::new());
    let mut unsupported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        match run_case(d) {
            Outcome::Pass => pass += 1,
            Outcome::Unsupported(r) => unsupported.entry(r).or_default().push(name),
            Outcome::Fail(m) => fails.push(format!("{name}: {m}")),
        }
    }
    let nun: usize = unsupported.values().map(|v| v.len()).sum();
    eprintln!(
        "ONNX node tests: {} cases, {pass} passed, {nun} unsupported, {} failed",
        dirs.len(),
        fails.len()
    );
    for (reason, cases) in &unsupported {
        eprintln!("  unsupported ({reason}): {}", cases.join(", "));
    }
    for f in &fails {
        eprintln!("  FAILED {f}");
    }
    assert!(fails.is_empty(), "{} conformance failures", fails.len());
}
