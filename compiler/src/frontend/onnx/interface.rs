//! What an ONNX file declares, read without importing it: its inputs and outputs with their
//! symbolic dimensions by name, its operators and its parameter count. `veil inspect` shows it
//! for a model whose dimensions are not bound yet, as Netron does.

use super::ImportError;
use crate::ir::DType;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use veil_onnx_proto::tensor_shape_proto::dimension::Value as D;
use veil_onnx_proto::{type_proto, Message, ModelProto, ValueInfoProto};

/// A graph input or output: name, element type, and per axis its size or symbolic name.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    /// The name.
    pub name: String,
    /// The element type (`?` when the file does not say).
    pub elem: String,
    /// Per axis, the fixed size or the symbolic dimension's name (`?` when neither is given).
    pub dims: Vec<String>,
}

/// The declared interface of an ONNX model.
#[derive(Clone, Debug, PartialEq)]
pub struct Interface {
    /// The graph's name.
    pub name: String,
    /// Opset imports, `(domain, version)` (the default domain as `ai.onnx`).
    pub opsets: Vec<(String, i64)>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<Port>,
    /// Graph outputs.
    pub outputs: Vec<Port>,
    /// Node count per operator (`domain::Op` outside the default domain).
    pub ops: BTreeMap<String, usize>,
    /// Number of initializers.
    pub initializers: usize,
    /// Number of elements over all initializers.
    pub parameters: u64,
}

/// Reads the interface of the ONNX file at `path`.
pub fn interface(path: &std::path::Path) -> Result<Interface, ImportError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ImportError::Io { path: p.clone(), error: e })?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| ImportError::NotOnnx { path: p.clone(), reason: e.to_string() })?;
    let graph = model.graph.unwrap_or_default();
    let inits: HashSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let mut ops = BTreeMap::new();
    for n in &graph.node {
        let op = n.op_type.clone().unwrap_or_default();
        let key = match n.domain.as_deref() {
            None | Some("") | Some("ai.onnx") => op,
            Some(d) => format!("{d}::{op}"),
        };
        *ops.entry(key).or_insert(0) += 1;
    }
    Ok(Interface {
        name: graph.name.clone().unwrap_or_default(),
        opsets: model
            .opset_import
            .iter()
            .map(|o| {
                let d = o.domain.clone().filter(|d| !d.is_empty());
                (d.unwrap_or_else(|| "ai.onnx".into()), o.version.unwrap_or(0))
            })
            .collect(),
        inputs: graph
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_deref().unwrap_or_default()))
            .map(port)
            .collect(),
        outputs: graph.output.iter().map(port).collect(),
        ops,
        initializers: graph.initializer.len(),
        parameters: graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>())
            .sum(),
    })
}

fn port(v: &ValueInfoProto) -> Port {
    let (elem, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let elem = DType::from_onnx(t.elem_type.unwrap_or(0))
                .map(|d| d.to_string())
                .unwrap_or_else(|_| format!("elem_type {}", t.elem_type.unwrap_or(0)));
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(D::DimValue(n)) => n.to_string(),
                            Some(D::DimParam(p)) => p.clone(),
                            None => "?".into(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (elem, dims)
        }
        _ => ("?".into(), Vec::new()),
    };
    Port { name: v.name.clone().unwrap_or_default(), elem, dims }
}

impl Interface {
    /// The symbolic dimension names, each once, in order of appearance on the inputs.
    pub fn symbols(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for d in self.inputs.iter().flat_map(|p| &p.dims) {
            if d.parse::<u64>().is_err() && d != "?" && !out.contains(&d.as_str()) {
                out.push(d);
            }
        }
        out
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
        writeln!(f, "model `{}` (opsets: {})", self.name, opsets.join(", "))?;
        for (what, ports) in [("input", &self.inputs), ("output", &self.outputs)] {
            for p in ports {
                writeln!(f, "  {what} {}: {}[{}]", p.name, p.elem, p.dims.join(", "))?;
            }
        }
        writeln!(f, "  {} initializers, {} parameters", self.initializers, self.parameters)?;
        let nodes: usize = self.ops.values().sum();
        let ops: Vec<String> = self.ops.iter().map(|(o, n)| format!("{o} {n}")).collect();
        writeln!(f, "  {nodes} nodes: {}", ops.join(", "))
    }
}
