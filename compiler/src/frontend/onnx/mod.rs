//! ONNX import: `ModelProto` to the IR, with static shapes and shape plumbing folded away.
//!
//! - Initializers with more than one float element are model parameters (`Weight`); scalar
//!   floats, integer and boolean initializers, and `Constant` nodes are public constants.
//! - Symbolic input dimensions are bound by [`ImportOptions`] (`--seq`, `--batch`, `--dim`).
//! - Every node whose inputs are all constants is evaluated at import ([`context::Cx::wire`]),
//!   so `Shape`, `Gather`/`Slice` on shapes, `ConstantOfShape`, `Range`, `Unsqueeze`/`Concat`
//!   of shape vectors and `Equal`/`Where`/`Cast` on constants disappear.
//! - Unsupported operators are reported all at once, before anything else is translated.
//! - onnxruntime's `com.microsoft` contrib operators (fused BERT/GPT-2 exports) are expanded
//!   into the IR the unfused graph gives ([`ops::contrib_registry`]).

pub mod branch;
pub mod context;
pub mod error;
pub mod interface;
pub mod ops;
pub mod tensor;

use crate::ir::{verify, DType, Graph, Op, Tensor, TensorType, Value, ValueDef};
use context::Cx;
pub use error::{ImportError, UnsupportedNode};
use std::collections::{HashMap, HashSet};
use veil_onnx_proto::{type_proto, Message, ModelProto, NodeProto, ValueInfoProto};

/// How to bind symbolic dimensions and which inputs to treat as constants.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Binds every symbolic dimension whose name contains "seq" (any case).
    pub seq: Option<usize>,
    /// Binds every symbolic dimension whose name contains "batch" (default 1).
    pub batch: Option<usize>,
    /// Binds symbolic dimensions by exact name.
    pub dims: Vec<(String, usize)>,
    /// Graph inputs to replace by constants (e.g. shape operands fed as inputs in ONNX's own
    /// conformance tests); they are folded like any other constant.
    pub const_inputs: HashMap<String, Tensor>,
}

/// Reads and imports an ONNX file.
pub fn import_file(path: &std::path::Path, opts: &ImportOptions) -> Result<Graph, ImportError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ImportError::Io { path: p.clone(), error: e })?;
    import_bytes(&bytes, &p, opts)
}

/// Imports an ONNX model from bytes (`path` is used in messages only).
pub fn import_bytes(bytes: &[u8], path: &str, opts: &ImportOptions) -> Result<Graph, ImportError> {
    let not_onnx = |reason: String| ImportError::NotOnnx { path: path.to_string(), reason };
    let model = ModelProto::decode(bytes).map_err(|e| not_onnx(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or_else(|| not_onnx("it has no graph".into()))?;
    if model.ir_version.is_none() || (graph.node.is_empty() && graph.output.is_empty()) {
        return Err(not_onnx("it has no IR version or an empty graph".into()));
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| not_onnx("it imports no version of the default operator set".into()))?;
    let registry = Builders::new();

    let mut unsupported = Vec::new();
    collect_unsupported(&model, &graph.node, &registry, &mut unsupported);
    if !unsupported.is_empty() {
        return Err(ImportError::Unsupported { path: path.to_string(), nodes: unsupported });
    }

    let name = graph.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "model".into());
    let mut cx = Cx {
        g: Graph::new(name),
        names: HashMap::new(),
        opset,
        path,
        node: None,
        node_name: String::new(),
    };
    let gerr = |msg: String| ImportError::Graph { path: path.to_string(), msg };

    let init_names: HashSet<&str> =
        graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    for t in &graph.initializer {
        let tname = t.name.clone().unwrap_or_default();
        let tensor = tensor::from_proto(t).map_err(|e| gerr(e.to_string()))?;
        let v = initializer(&mut cx.g, &tname, tensor);
        cx.names.insert(tname, v);
    }
    let declared = |n: &String| graph.input.iter().any(|i| i.name.as_ref() == Some(n));
    if let Some(n) = opts.const_inputs.keys().find(|n| !declared(n)) {
        return Err(gerr(format!("there is no input `{n}` to fix")));
    }
    for input in &graph.input {
        let iname = input.name.clone().unwrap_or_default();
        if init_names.contains(iname.as_str()) {
            continue;
        }
        let ty = input_type(input, opts, path)?;
        let v = match opts.const_inputs.get(&iname) {
            Some(t) => {
                // A flag fixed by name (`--branch`) is one value, whatever its declared shape.
                let mut t = t.clone();
                if t.numel() == 1 && ty.numel() == 1 && t.dtype == ty.dtype {
                    t.shape = ty.shape.clone();
                }
                if t.ty() != ty {
                    return Err(gerr(format!(
                        "constant for input `{iname}` is {}, the model declares {ty}",
                        t.ty()
                    )));
                }
                cx.g.add_const(&iname, t)
            }
            None => cx.g.add_input(&iname, ty),
        };
        cx.names.insert(iname, v);
    }

    import_nodes(&mut cx, &graph.node, &registry)?;
    cx.node = None;

    for out in &graph.output {
        let oname = out.name.clone().unwrap_or_default();
        let mut v = *cx
            .names
            .get(&oname)
            .ok_or_else(|| gerr(format!("output `{oname}` is never computed")))?;
        check_declared(&cx.g, v, out, path)?;
        if cx.g.values[v].name != oname
            || cx.g.outputs.contains(&v)
            || !matches!(cx.g.values[v].def, ValueDef::Result(_))
        {
            // An output aliasing an input, a constant or another output keeps its own name.
            let shape = cx.g.ty(v).shape.clone();
            v = if let Some(t) = cx.g.const_data(v).cloned() {
                cx.g.add_const(&oname, t)
            } else {
                cx.g.add_node(&oname, Op::Reshape { shape }, &[v], &oname)
                    .map_err(|e| gerr(e.to_string()))?
            };
        }
        cx.g.outputs.push(v);
    }
    let mut g = cx.g;
    g.remove_dead_nodes();
    let g = g.compact();
    verify(&g)
        .map_err(|e| gerr(format!("the imported graph is inconsistent (a veil bug):\n{e}")))?;
    Ok(g)
}

/// An initializer as the IR holds it: a float tensor of more than one element is a model
/// parameter, anything else a public constant.
pub(crate) fn initializer(g: &mut Graph, name: &str, tensor: Tensor) -> Value {
    if tensor.dtype.is_float() && tensor.numel() > 1 {
        g.add_weight(name, tensor)
    } else {
        g.add_const(name, tensor)
    }
}

/// The operator builders of the domains veil imports: the default one and `com.microsoft`.
pub(crate) struct Builders {
    onnx: HashMap<&'static str, ops::OpBuilder>,
    contrib: HashMap<&'static str, ops::OpBuilder>,
}

impl Builders {
    fn new() -> Builders {
        Builders { onnx: ops::registry(), contrib: ops::contrib_registry() }
    }

    /// The builder of `op` in `domain` (`ai.onnx` for the default domain).
    pub(crate) fn get(&self, domain: &str, op: &str) -> Option<ops::OpBuilder> {
        match domain {
            "ai.onnx" => self.onnx.get(op).copied(),
            ops::MS_DOMAIN => self.contrib.get(op).copied(),
            _ => None,
        }
    }
}

/// Every node of `nodes` (and of the branches of their `If` nodes) whose operator the
/// importer does not implement.
fn collect_unsupported(
    model: &ModelProto,
    nodes: &[NodeProto],
    registry: &Builders,
    out: &mut Vec<UnsupportedNode>,
) {
    for (i, n) in nodes.iter().enumerate() {
        let domain = n.domain.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "ai.onnx".into());
        let op = n.op_type.clone().unwrap_or_default();
        if domain == "ai.onnx" && op == "If" {
            for g in branch::branches(n) {
                collect_unsupported(model, &g.node, registry, out);
            }
            continue;
        }
        if registry.get(&domain, &op).is_some() {
            continue;
        }
        let opset = model
            .opset_import
            .iter()
            .find(|o| {
                o.domain.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "ai.onnx".into())
                    == domain
            })
            .and_then(|o| o.version)
            .unwrap_or(0);
        out.push(UnsupportedNode {
            name: node_name(n.name.as_deref(), &op, i),
            op_type: op,
            domain,
            opset,
        });
    }
}

/// Translates `nodes` in order into `cx` (an `If` by the branch its condition selects).
pub(crate) fn import_nodes<'a>(
    cx: &mut Cx<'a>,
    nodes: &'a [NodeProto],
    registry: &Builders,
) -> Result<(), ImportError> {
    for (i, n) in nodes.iter().enumerate() {
        let op = n.op_type.clone().unwrap_or_default();
        cx.node = Some(n);
        cx.node_name = node_name(n.name.as_deref(), &op, i);
        let domain = n.domain.as_deref().filter(|d| !d.is_empty()).unwrap_or("ai.onnx");
        let outs = match (domain, op.as_str()) {
            ("ai.onnx", "If") => branch::inline_if(cx, n, registry)?,
            _ => {
                let build = registry
                    .get(domain, &op)
                    .ok_or_else(|| cx.err(format!("{op} from {domain} is not supported")))?;
                build(cx, n)?
            }
        };
        for (j, out) in n.output.iter().enumerate() {
            if out.is_empty() {
                continue;
            }
            let v = *outs
                .get(j)
                .ok_or_else(|| cx.err(format!("output {j} (`{out}`) is not produced")))?;
            cx.names.insert(out.clone(), v);
        }
    }
    Ok(())
}

fn node_name(name: Option<&str>, op: &str, i: usize) -> String {
    match name {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("{op}_{i}"),
    }
}

/// The static type of a graph input, binding symbolic dimensions.
fn input_type(
    input: &ValueInfoProto,
    opts: &ImportOptions,
    path: &str,
) -> Result<TensorType, ImportError> {
    let iname = input.name.clone().unwrap_or_default();
    let gerr = |msg: String| ImportError::Graph { path: path.to_string(), msg };
    let tt = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        Some(_) => {
            return Err(gerr(format!(
            "input `{iname}` is not a tensor (sequence, map and optional inputs are not supported)"
        )))
        }
        None => return Err(gerr(format!("input `{iname}` has no type"))),
    };
    let dtype = DType::from_onnx(tt.elem_type.unwrap_or(0))
        .map_err(|d| gerr(format!("input `{iname}` has the unsupported element type {d}")))?;
    let dims = tt.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default();
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        use veil_onnx_proto::tensor_shape_proto::dimension::Value as D;
        match d.value {
            Some(D::DimValue(v)) if v >= 0 => shape.push(v as usize),
            Some(D::DimValue(v)) => {
                return Err(gerr(format!("input `{iname}` has negative dimension {v}")))
            }
            Some(D::DimParam(p)) => {
                shape.push(bind(&p, opts).ok_or_else(|| ImportError::UnboundDim {
                    path: path.to_string(),
                    input: iname.clone(),
                    dim: p.clone(),
                    hint: hint(&p),
                })?)
            }
            None => {
                return Err(ImportError::UnboundDim {
                    path: path.to_string(),
                    input: iname.clone(),
                    dim: "?".into(),
                    hint: "--dim NAME=VALUE (the dimension has no name)".into(),
                })
            }
        }
    }
    if context::elements(&shape).is_none() {
        return Err(gerr(format!(
            "input `{iname}` of shape {shape:?} has more elements than a tensor can hold"
        )));
    }
    Ok(TensorType::new(dtype, shape))
}

fn bind(p: &str, opts: &ImportOptions) -> Option<usize> {
    if let Some(&(_, v)) = opts.dims.iter().find(|(n, _)| n == p) {
        return Some(v);
    }
    let lower = p.to_lowercase();
    if lower.contains("seq") {
        return opts.seq;
    }
    if lower.contains("batch") {
        return Some(opts.batch.unwrap_or(1));
    }
    None
}

fn hint(p: &str) -> String {
    let lower = p.to_lowercase();
    if lower.contains("seq") {
        format!("--seq N (or --dim {p}=N)")
    } else {
        format!("--dim {p}=N")
    }
}

/// Numeric dimensions declared on a graph output must match inference; symbolic ones are
/// ignored (exporters name them arbitrarily).
fn check_declared(
    g: &Graph,
    v: Value,
    out: &ValueInfoProto,
    path: &str,
) -> Result<(), ImportError> {
    let Some(type_proto::Value::TensorType(tt)) =
        out.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Ok(());
    };
    let have = &g.ty(v).shape;
    let Some(shape) = tt.shape.as_ref() else { return Ok(()) };
    use veil_onnx_proto::tensor_shape_proto::dimension::Value as D;
    let oname = out.name.clone().unwrap_or_default();
    if shape.dim.len() != have.len() {
        return Err(ImportError::Graph {
            path: path.into(),
            msg: format!(
                "output `{oname}` is declared with rank {} but computes {have:?}",
                shape.dim.len()
            ),
        });
    }
    for (i, d) in shape.dim.iter().enumerate() {
        if let Some(D::DimValue(x)) = d.value {
            if x as usize != have[i] {
                return Err(ImportError::Graph { path: path.into(), msg: format!("output `{oname}` is declared with dimension {i} = {x} but computes {have:?}") });
            }
        }
    }
    Ok(())
}

/// A graph input's name and, per axis, its symbolic dimension's name (`None`: a fixed size).
pub type SymbolicInput = (String, Vec<Option<String>>);

/// The symbolic dimensions of an ONNX file's graph inputs (initializers excluded): per input,
/// its name and per axis the symbolic dimension's name (`None` for a fixed size). What
/// onnxruntime binds from the inputs it is given; veil binds them the same way
/// ([`bind_from_shapes`]).
pub fn symbolic_dims(path: &std::path::Path) -> Result<Vec<SymbolicInput>, ImportError> {
    let dims = |p: interface::Port| {
        let named = |d: String| (d.parse::<u64>().is_err() && d != "?").then_some(d);
        (p.name, p.dims.into_iter().map(named).collect())
    };
    Ok(interface::interface(path)?.inputs.into_iter().map(dims).collect())
}

/// Binds symbolic dimensions from the shapes of the inputs given (by input name), as
/// onnxruntime does: each symbolic dimension takes the size the inputs have on its axes.
/// Fails when two inputs disagree on one, naming both.
pub fn bind_from_shapes(
    symbolic: &[SymbolicInput],
    shapes: &[(String, Vec<usize>)],
) -> Result<Vec<(String, usize)>, String> {
    let mut bound: Vec<(String, usize, String)> = Vec::new();
    for (input, shape) in shapes {
        let Some((_, dims)) = symbolic.iter().find(|(n, _)| n == input) else { continue };
        if dims.len() != shape.len() {
            continue;
        }
        for (d, &size) in dims.iter().zip(shape) {
            let Some(d) = d else { continue };
            match bound.iter().find(|(n, _, _)| n == d) {
                Some((_, v, by)) if *v != size => {
                    return Err(format!(
                        "the inputs disagree on the dimension `{d}`: `{by}` has {v}, `{input}` has {size}"
                    ))
                }
                Some(_) => {}
                None => bound.push((d.clone(), size, input.clone())),
            }
        }
    }
    Ok(bound.into_iter().map(|(n, v, _)| (n, v)).collect())
}
