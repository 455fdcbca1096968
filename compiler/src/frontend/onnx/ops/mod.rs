//! The op registry: ONNX `op_type` → builder, one file per operator family.

mod contrib;
mod math;
mod nn;
mod shape;

use super::context::Cx;
use super::error::ImportError;
use crate::ir::Value;
use std::collections::HashMap;
use veil_onnx_proto::NodeProto;

/// Translates one node into IR values, one per ONNX output (in order).
pub type OpBuilder = fn(&mut Cx, &NodeProto) -> Result<Vec<Value>, ImportError>;

/// Every supported default-domain operator.
pub fn registry() -> HashMap<&'static str, OpBuilder> {
    let mut r: HashMap<&'static str, OpBuilder> = HashMap::new();
    math::register(&mut r);
    nn::register(&mut r);
    shape::register(&mut r);
    r
}

/// onnxruntime's `com.microsoft` domain.
pub const MS_DOMAIN: &str = "com.microsoft";

/// Every supported `com.microsoft` contrib operator.
pub fn contrib_registry() -> HashMap<&'static str, OpBuilder> {
    let mut r: HashMap<&'static str, OpBuilder> = HashMap::new();
    contrib::register(&mut r);
    r
}
