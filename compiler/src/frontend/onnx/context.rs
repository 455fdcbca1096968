//! The importer's state while translating one graph, and helpers the op builders share.

use super::error::ImportError;
use super::tensor::from_proto;
use crate::eval;
pub use crate::frontend::elements;
use crate::ir::{Graph, Op, Tensor, Value, ValueDef};
use std::collections::HashMap;
use veil_onnx_proto::{attribute_proto::AttributeType, AttributeProto, NodeProto};

/// Limit on the elements of a constant folded at import (a shape computation, a folded weight
/// transform): protects against absurd shapes, which would be evaluated at once.
pub const MAX_CONST: usize = 1 << 28;

/// Translation state.
pub struct Cx<'a> {
    /// The graph being built.
    pub g: Graph,
    /// ONNX value name → IR value.
    pub names: HashMap<String, Value>,
    /// Default-domain opset version.
    pub opset: i64,
    /// File path for messages.
    pub path: &'a str,
    /// The node being translated.
    pub node: Option<&'a NodeProto>,
    /// Its display name.
    pub node_name: String,
}

impl<'a> Cx<'a> {
    /// An error about the current node.
    pub fn err(&self, msg: impl Into<String>) -> ImportError {
        ImportError::Node {
            path: self.path.to_string(),
            node: self.node_name.clone(),
            op_type: self.node.map(|n| n.op_type.clone().unwrap_or_default()).unwrap_or_default(),
            msg: msg.into(),
        }
    }

    fn n(&self) -> &'a NodeProto {
        self.node.expect("a node is being translated")
    }

    /// Input `i` of the current node; an error when absent or empty.
    pub fn input(&self, i: usize) -> Result<Value, ImportError> {
        self.opt_input(i)?.ok_or_else(|| self.err(format!("input {i} is required")))
    }

    /// Input `i` when present (ONNX marks an omitted optional input with an empty name).
    pub fn opt_input(&self, i: usize) -> Result<Option<Value>, ImportError> {
        match self.n().input.get(i) {
            None => Ok(None),
            Some(name) if name.is_empty() => Ok(None),
            Some(name) => {
                self.names.get(name).copied().map(Some).ok_or_else(|| {
                    self.err(format!("input `{name}` is not defined before this node"))
                })
            }
        }
    }

    /// Number of inputs given (trailing empty ones included).
    pub fn num_inputs(&self) -> usize {
        self.n().input.len()
    }

    /// The ONNX name of output `i` (empty when unused).
    pub fn output_name(&self, i: usize) -> String {
        self.n().output.get(i).cloned().unwrap_or_default()
    }

    /// Number of outputs.
    pub fn num_outputs(&self) -> usize {
        self.n().output.len()
    }

    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.n().attribute.iter().find(|a| a.name.as_deref() == Some(name))
    }

    /// An integer attribute.
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).and_then(|a| a.i)
    }

    /// An integer-list attribute.
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    /// A float attribute.
    pub fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).and_then(|a| a.f)
    }

    /// A string attribute.
    pub fn attr_string(&self, name: &str) -> Option<String> {
        self.attr(name).and_then(|a| a.s.as_ref()).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// A tensor attribute.
    pub fn attr_tensor(&self, name: &str) -> Result<Option<Tensor>, ImportError> {
        match self.attr(name).and_then(|a| a.t.as_ref()) {
            Some(t) => from_proto(t).map(Some).map_err(|e| self.err(e.to_string())),
            None => Ok(None),
        }
    }

    /// The attribute's declared type, when present.
    pub fn attr_type(&self, name: &str) -> Option<AttributeType> {
        self.attr(name).and_then(|a| a.r#type).and_then(|t| AttributeType::try_from(t).ok())
    }

    /// Names of all attributes of the node.
    pub fn attr_names(&self) -> Vec<String> {
        self.n().attribute.iter().filter_map(|a| a.name.clone()).collect()
    }

    /// Constant data of `v`, if it is a public constant.
    pub fn const_of(&self, v: Value) -> Option<&Tensor> {
        self.g.const_data(v)
    }

    /// The integers of a constant input (shapes, axes, indices); an error naming `what` when
    /// the input is computed from data.
    pub fn const_ints(&self, v: Value, what: &str) -> Result<Vec<i64>, ImportError> {
        let t = self.const_of(v).ok_or_else(|| {
            self.err(format!("{what} (`{}`) must be a constant known at compile time, but it is computed from data", self.g.values[v].name))
        })?;
        if !t.dtype.is_int() {
            return Err(self.err(format!("{what} must be integers, got {}", t.dtype)));
        }
        Ok(t.to_i64_vec())
    }

    /// The floats of a constant scalar input.
    pub fn const_f64(&self, v: Value, what: &str) -> Result<f64, ImportError> {
        let t = self
            .const_of(v)
            .ok_or_else(|| self.err(format!("{what} must be a compile-time constant")))?;
        if t.numel() != 1 {
            return Err(self.err(format!("{what} must be a scalar, got shape {:?}", t.shape)));
        }
        Ok(t.get_f64(0))
    }

    /// Normalises a possibly negative axis for a tensor of rank `rank`.
    pub fn axis(&self, a: i64, rank: usize, what: &str) -> Result<usize, ImportError> {
        let r = rank as i64;
        if r == 0 {
            return Err(
                self.err(format!("{what} {a}: the input is a scalar (rank 0), which has no axes"))
            );
        }
        if a < -r || a >= r {
            return Err(self.err(format!("{what} {a} is out of range for rank {rank}")));
        }
        Ok(if a < 0 { (a + r) as usize } else { a as usize })
    }

    /// Adds `op(args)` named `name`; when every argument is a public constant the result is
    /// evaluated now and becomes a constant (this is how shape computations fold away).
    pub fn wire(&mut self, op: Op, args: &[Value], name: &str) -> Result<Value, ImportError> {
        // Shapes from the file: shape inference multiplies a target shape's dimensions.
        if let Op::Reshape { shape } | Op::Expand { shape } = &op {
            if elements(shape).is_none() {
                return Err(self.err(format!(
                    "the target shape {shape:?} has more elements than a tensor can hold"
                )));
            }
        }
        let consts: Option<Vec<&Tensor>> = args.iter().map(|&a| self.g.const_data(a)).collect();
        if let Some(ts) = consts {
            let tys: Vec<_> = ts.iter().map(|t| t.ty()).collect();
            let tyrefs: Vec<_> = tys.iter().collect();
            let ty = crate::ir::shape::infer(&op, &tyrefs).map_err(|e| self.err(e.to_string()))?;
            // Broadcasting or expanding constants can make a result far larger than the file.
            if elements(&ty.shape).is_none_or(|n| n > MAX_CONST) {
                return Err(self.err(format!(
                    "folding it would make a constant of shape {:?}, more than 2^28 elements",
                    ty.shape
                )));
            }
            let t = eval::eval_op(&op, &ts, &ty).map_err(|e| self.err(e.to_string()))?;
            return Ok(self.g.add_const(name, t));
        }
        let node_name = if name == self.output_name(0) || name.is_empty() {
            self.node_name.clone()
        } else {
            format!("{}.{}", self.node_name, name.rsplit('.').next().unwrap_or(name))
        };
        let v = self.g.add_node(&node_name, op, args, name).map_err(|e| self.err(e.to_string()))?;
        let shape = &self.g.ty(v).shape;
        if elements(shape).is_none() {
            return Err(self.err(format!(
                "its result of shape {shape:?} has more elements than a tensor can hold"
            )));
        }
        Ok(v)
    }

    /// A constant with a fresh name derived from the node.
    pub fn constant(&mut self, suffix: &str, t: Tensor) -> Value {
        let name = format!("{}.{suffix}", self.node_name);
        self.g.add_const(&name, t)
    }

    /// True when `v` is a weight (a model parameter), not a constant.
    pub fn is_weight(&self, v: Value) -> bool {
        matches!(self.g.values[v].def, ValueDef::Weight(_))
    }
}
