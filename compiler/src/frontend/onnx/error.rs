//! Import errors: each names the file and the node (name, op type, domain, opset) or value.

use std::fmt;

/// A node the importer cannot translate.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedNode {
    /// Node name (or `#index` when unnamed).
    pub name: String,
    /// ONNX op type.
    pub op_type: String,
    /// Operator domain (`ai.onnx` for the default).
    pub domain: String,
    /// Opset version of that domain.
    pub opset: i64,
}

impl fmt::Display for UnsupportedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({} from {} opset {})", self.name, self.op_type, self.domain, self.opset)
    }
}

/// Why an ONNX file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// Path.
        path: String,
        /// OS error (in the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// The bytes are not an ONNX model (truncated, corrupt, or another format).
    #[error("{path} is not a valid ONNX model: {reason}")]
    NotOnnx {
        /// Path.
        path: String,
        /// What the protobuf decoder said.
        reason: String,
    },
    /// Nodes whose operators veil does not implement, all listed.
    #[error("{path}: {} unsupported node{}:\n{}", .nodes.len(), if .nodes.len() == 1 { "" } else { "s" }, .nodes.iter().map(|n| format!("  {n}")).collect::<Vec<_>>().join("\n"))]
    Unsupported {
        /// Path.
        path: String,
        /// Every unsupported node.
        nodes: Vec<UnsupportedNode>,
    },
    /// A symbolic input dimension that no flag binds.
    #[error("{path}: input `{input}` has dimension `{dim}` with no value; bind it with {hint}")]
    UnboundDim {
        /// Path.
        path: String,
        /// Graph input.
        input: String,
        /// The symbolic dimension's name.
        dim: String,
        /// The flag to use.
        hint: String,
    },
    /// A node is malformed or inconsistent (shapes, attributes, non-constant shape inputs).
    #[error("{path}: node `{node}` ({op_type}): {msg}")]
    Node {
        /// Path.
        path: String,
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: String,
        /// What is wrong.
        msg: String,
    },
    /// The graph as a whole is malformed (missing values, bad declarations, unsupported types).
    #[error("{path}: {msg}")]
    Graph {
        /// Path.
        path: String,
        /// What is wrong.
        msg: String,
    },
}
