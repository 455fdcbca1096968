//! veil's compiler: front ends (ONNX, DSL) into one graph IR, passes over it, a plaintext
//! reference evaluator, and the backend that lowers the IR to two-party bytecode.
#![deny(missing_docs)]

pub mod backend;
pub mod compile;
pub mod dsl;
pub mod eval;
pub mod file_error;
pub mod fixed;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod ir;
pub mod npy;
pub mod passes;
pub mod prune;
pub mod recipe;
pub mod rsqrt_fit;
pub mod stdlib_table;
pub mod weights;
