//! Front ends: ONNX files to IR (the DSL front end is `crate::dsl`).

pub mod onnx;
pub mod weight_names;
