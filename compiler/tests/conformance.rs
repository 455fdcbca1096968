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
//!
//! Which cases pass and which are unsupported (with their reason) is pinned in `passing.txt` and
//! `unsupported.txt` next to the cases, so a case that starts or stops passing, or is rejected
//! for another reason, fails the test until the lists are rewritten on purpose
//! (`VEIL_BLESS=1 cargo test -p veil-compiler --test conformance`, then review the diff).

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
    from_proto(&t).map_err(|e| e.to_string())
}

/// `element type X` from a message naming an unsupported element type.
fn element_type(msg: &str) -> Option<String> {
    let i = msg.find("unsupported element type ")?;
    let d = msg[i + 25..].split([' ', ',', ')']).next().unwrap_or("?");
    Some(format!("element type {d}"))
}

fn unsupported_reason(e: &ImportError) -> Option<String> {
    match e {
        ImportError::Unsupported { nodes, .. } => Some(format!(
            "operator {}",
            nodes.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>().join(", ")
        )),
        ImportError::Graph { msg, .. } | ImportError::Node { msg, .. } => {
            if let Some(r) = element_type(msg) {
                Some(r)
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
                return match element_type(&e) {
                    Some(r) => Outcome::Unsupported(format!("{r} in the test data")),
                    None => Outcome::Fail(e),
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
                return match element_type(&e) {
                    Some(r) => Outcome::Unsupported(format!("{r} in the test data")),
                    None => Outcome::Fail(e),
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

const PASSING: &str = "passing.txt";
const UNSUPPORTED: &str = "unsupported.txt";
const BLESS: &str = "VEIL_BLESS=1 cargo test -p veil-compiler --test conformance";

/// The case names of a pinned list, one per line (`name` or `name: reason`), without the
/// `#` comments.
fn read_list(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (write it with `{BLESS}`)", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(": ") {
            Some((name, reason)) => (name.to_string(), reason.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

fn write_list(path: &Path, what: &str, entries: &BTreeMap<String, String>) {
    let mut text = format!(
        "# ONNX node tests {what} ({} cases), pinned by compiler/tests/conformance.rs.\n\
         # Rewritten by `{BLESS}`: review the diff.\n",
        entries.len()
    );
    for (name, reason) in entries {
        text +=
            &if reason.is_empty() { format!("{name}\n") } else { format!("{name}: {reason}\n") };
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// How the outcomes differ from the pinned lists, one line per moved case.
fn moved(
    pass: &BTreeMap<String, String>,
    unsupported: &BTreeMap<String, String>,
    pinned_pass: &BTreeMap<String, String>,
    pinned_unsupported: &BTreeMap<String, String>,
) -> Vec<String> {
    let pinned = |name: &str| match (pinned_pass.contains_key(name), pinned_unsupported.get(name)) {
        (true, _) => "passing".to_string(),
        (_, Some(r)) => format!("unsupported ({r})"),
        _ => "not pinned".to_string(),
    };
    let mut out = Vec::new();
    for name in pass.keys().filter(|n| !pinned_pass.contains_key(*n)) {
        out.push(format!("{name}: passes now, pinned as {}", pinned(name)));
    }
    for (name, reason) in unsupported {
        if pinned_unsupported.get(name) != Some(reason) {
            out.push(format!("{name}: unsupported ({reason}) now, pinned as {}", pinned(name)));
        }
    }
    for name in pinned_pass.keys().chain(pinned_unsupported.keys()) {
        if !pass.contains_key(name) && !unsupported.contains_key(name) {
            out.push(format!("{name}: pinned as {}, now failing or missing", pinned(name)));
        }
    }
    out
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
    let mut pass = BTreeMap::new();
    let mut unsupported = BTreeMap::new();
    let mut fails = Vec::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        match run_case(d) {
            Outcome::Pass => {
                pass.insert(name, String::new());
            }
            Outcome::Unsupported(r) => {
                unsupported.insert(name, r);
            }
            Outcome::Fail(m) => fails.push(format!("{name}: {m}")),
        }
    }
    eprintln!(
        "ONNX node tests: {} cases, {} passed, {} unsupported, {} failed",
        dirs.len(),
        pass.len(),
        unsupported.len(),
        fails.len()
    );
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, reason) in &unsupported {
        by_reason.entry(reason).or_default().push(name);
    }
    for (reason, cases) in &by_reason {
        eprintln!("  unsupported ({reason}): {}", cases.join(", "));
    }
    for f in &fails {
        eprintln!("  FAILED {f}");
    }
    assert!(fails.is_empty(), "{} conformance failures", fails.len());
    if std::env::var_os("VEIL_BLESS").is_some() {
        write_list(&root.join(PASSING), "that pass", &pass);
        write_list(
            &root.join(UNSUPPORTED),
            "veil rejects on purpose, with the reason",
            &unsupported,
        );
        return;
    }
    let (pinned_pass, pinned_unsupported) =
        (read_list(&root.join(PASSING)), read_list(&root.join(UNSUPPORTED)));
    let moved = moved(&pass, &unsupported, &pinned_pass, &pinned_unsupported);
    assert!(
        moved.is_empty(),
        "{} ONNX node tests moved against tests/fixtures/onnx-node-tests/{{{PASSING},{UNSUPPORTED}}}:\n  {}\n\
         if intended, rewrite the lists with `{BLESS}` and review the diff",
        moved.len(),
        moved.join("\n  ")
    );
}
