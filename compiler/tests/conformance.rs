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

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use veil_compiler::frontend::onnx::{import_bytes, tensor::from_proto, ImportError, ImportOptions};
use veil_compiler::ir::{Op, Tensor};
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

/// One node test, imported: the graph, its float inputs, and the expected outputs.
struct Case {
    graph: veil_compiler::ir::Graph,
    inputs: HashMap<String, Tensor>,
    wants: Vec<Tensor>,
}

/// Reads and imports the case in `dir`; `Err` is its outcome when it cannot be run.
fn load_case(dir: &Path) -> Result<Case, Outcome> {
    let model_bytes =
        std::fs::read(dir.join("model.onnx")).map_err(|e| Outcome::Fail(e.to_string()))?;
    let model = ModelProto::decode(model_bytes.as_slice())
        .map_err(|e| Outcome::Fail(format!("decode: {e}")))?;
    let graph = model.graph.clone().unwrap_or_default();
    let data = dir.join("test_data_set_0");
    for i in &graph.input {
        let is_tensor = matches!(
            i.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(veil_onnx_proto::type_proto::Value::TensorType(_))
        );
        if !is_tensor {
            return Err(Outcome::Unsupported("sequence/optional type".into()));
        }
    }
    let in_data = |e: String| match element_type(&e) {
        Some(r) => Outcome::Unsupported(format!("{r} in the test data")),
        None => Outcome::Fail(e),
    };
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
        let t = load_pb(&p).map_err(in_data)?;
        if t.dtype.is_int() || t.shape.is_empty() {
            opts.const_inputs.insert(name.clone(), t);
        } else {
            inputs.insert(name.clone(), t);
        }
    }
    let g = import_bytes(&model_bytes, &dir.display().to_string(), &opts).map_err(|e| {
        match unsupported_reason(&e) {
            Some(r) => Outcome::Unsupported(r),
            None => Outcome::Fail(format!("import: {e}")),
        }
    })?;
    let mut wants = Vec::new();
    for i in 0..g.outputs.len() {
        wants.push(load_pb(&data.join(format!("output_{i}.pb"))).map_err(in_data)?);
    }
    Ok(Case { graph: g, inputs, wants })
}

/// Where `got` differs from `want` beyond `tol(|want|)` (exactly for integers and bools).
fn compare(i: usize, got: &Tensor, want: &Tensor, tol: &dyn Fn(f64) -> f64) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("output {i}: got {} want {}", got.ty(), want.ty()));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let exact = !want.dtype.is_float();
    for (k, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if exact {
            a == b
        } else {
            (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol(b.abs())
        };
        if !ok {
            return Err(format!("output {i} element {k}: got {a}, want {b}"));
        }
    }
    Ok(())
}

fn run_case(dir: &Path) -> Outcome {
    let case = match load_case(dir) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let outs = match veil_compiler::eval::run(&case.graph, &case.inputs) {
        Ok(o) => o,
        Err(e) => return Outcome::Fail(format!("eval: {e}")),
    };
    for (i, (got, want)) in outs.iter().zip(&case.wants).enumerate() {
        if got.dtype != want.dtype {
            return Outcome::Fail(format!("output {i}: got {} want {}", got.ty(), want.ty()));
        }
        if let Err(e) = compare(i, got, want, &|w| 1e-7 + 1e-3 * w) {
            return Outcome::Fail(e);
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

/// What compiling a passing case two-party and running it gave.
enum TwoParty {
    /// Within tolerance of ONNX's output; the worst error relative to max|want|.
    Agrees(f64),
    /// The compiler refused it, with its message.
    Refused(String),
    /// Compiled but ran wrong or failed to run.
    Wrong(String),
}

/// Every float input the client's secret, every initializer the server's: compile, run in
/// memory, compare with ONNX's expected outputs within 1e-3 + 1e-2·max|want| per output.
fn two_party_case(dir: &Path) -> TwoParty {
    use veil_compiler::backend::partition::Vis;
    use veil_compiler::compile::{compile, CompileOptions};
    let Case { mut graph, inputs, wants } = match load_case(dir) {
        Ok(c) => c,
        Err(_) => return TwoParty::Wrong("no longer loads".into()),
    };
    // A client input alone would be computed by the client in the clear: adding a zero the
    // server holds makes every float input a secret of both, so each op runs two-party.
    for x in graph.inputs.clone() {
        let ty = graph.ty(x).clone();
        if !ty.dtype.is_float() {
            continue;
        }
        let name = graph.values[x].name.clone();
        let z = graph.add_weight(&format!("{name}.zero"), Tensor::zeros(&ty));
        let y = graph.add_node(&format!("{name}.secret"), Op::Add, &[x, z], &name).unwrap();
        graph.replace_uses(x, y);
        let n = graph.order.pop().unwrap();
        graph.nodes[n].args[0] = x;
        graph.order.insert(0, n);
    }
    if let Err(e) =
        veil_compiler::passes::run(&mut graph, &mut veil_compiler::passes::import_pipeline())
    {
        return TwoParty::Refused(e.to_string());
    }
    let c = match compile(graph, &|_: &str| Vis::Server, &CompileOptions::default()) {
        Ok(c) => c,
        Err(e) => return TwoParty::Refused(e.to_string()),
    };
    if let Some((n, _)) = inputs.iter().find(|(_, t)| !t.all_finite()) {
        return TwoParty::Refused(format!("input `{n}` holds NaN or ±∞ (fixed point has neither)"));
    }
    let outs = match common::run_compiled(&c, &inputs, false) {
        Ok((_, outs)) => outs,
        Err(e) => return TwoParty::Wrong(format!("run: {e}")),
    };
    let mut worst = 0f64;
    for (i, ((_, got), want)) in outs.iter().zip(&wants).enumerate() {
        let w = want.to_f64_vec();
        let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
        if let Err(e) = compare(i, got, want, &|_| 1e-3 + 1e-2 * scale) {
            return TwoParty::Wrong(e);
        }
        let err = common::max_abs_diff(&got.to_f64_vec(), &w);
        worst = worst.max(if scale > 0.0 { err / scale } else { err });
    }
    TwoParty::Agrees(worst)
}

const TWO_PARTY_REFUSED: &str = "two_party_refused.txt";

/// Every passing case whose float inputs can be secret, compiled two-party and run: it agrees
/// with ONNX's output or the compiler refuses it with a reason, pinned in
/// `two_party_refused.txt` like the lists above; a wrong answer always fails.
#[test]
fn onnx_node_two_party() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx-node-tests");
    let passing = read_list(&root.join(PASSING));
    let (mut agree, mut refused, mut wrong) = (0, BTreeMap::new(), Vec::new());
    for name in passing.keys() {
        match two_party_case(&root.join(name)) {
            TwoParty::Agrees(e) => {
                agree += 1;
                eprintln!("  {name}: agrees (max err {e:.2e} of max|y|)");
            }
            TwoParty::Refused(r) => {
                // One line, without the model name every message starts with.
                let r = r.lines().next().unwrap_or("").replace(&format!("model `{name}`: "), "");
                refused.insert(name.clone(), r);
            }
            TwoParty::Wrong(m) => wrong.push(format!("{name}: {m}")),
        }
    }
    eprintln!(
        "two-party: {} passing node tests, {agree} agree, {} refused, {} wrong",
        passing.len(),
        refused.len(),
        wrong.len()
    );
    for w in &wrong {
        eprintln!("  WRONG {w}");
    }
    assert!(wrong.is_empty(), "{} node tests compiled two-party give a wrong answer", wrong.len());
    let path = root.join(TWO_PARTY_REFUSED);
    if std::env::var_os("VEIL_BLESS").is_some() {
        write_list(&path, "that the two-party compiler refuses, with the reason", &refused);
        return;
    }
    let pinned = read_list(&path);
    let mut moved = Vec::new();
    for (name, reason) in &refused {
        match pinned.get(name) {
            Some(p) if p == reason => {}
            Some(p) => moved.push(format!("{name}: refused now for `{reason}`, pinned `{p}`")),
            None => moved.push(format!("{name}: refused now (`{reason}`), pinned as agreeing")),
        }
    }
    for name in pinned.keys().filter(|n| !refused.contains_key(*n)) {
        moved.push(format!("{name}: agrees now, pinned as refused"));
    }
    assert!(
        moved.is_empty(),
        "{} node tests moved against tests/fixtures/onnx-node-tests/{TWO_PARTY_REFUSED}:\n  {}\n\
         if intended, rewrite the list with `{BLESS}` and review the diff",
        moved.len(),
        moved.join("\n  ")
    );
}
