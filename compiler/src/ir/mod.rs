//! The compiler's single IR: a static-shape DAG of tensor operators whose values carry a dtype
//! and a shape. Both front ends (ONNX, DSL) produce it; passes rewrite it; the reference
//! evaluator runs it; the backend lowers it to bytecode.

pub mod dtype;
pub mod graph;
pub mod op;
pub mod print;
pub mod provenance;
pub mod shape;
pub mod tensor;
pub mod verify;

pub use dtype::{DType, TensorType};
pub use graph::{Graph, Node, NodeData, Pattern, PatternKind, Value, ValueData, ValueDef};
pub use op::{GeluApprox, Op, TOP_K_DROP};
pub use provenance::{Provenance, Step};
pub use tensor::{Data, Tensor};
pub use verify::{verify, VerifyErrors};
