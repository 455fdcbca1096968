//! The DSL front end: `.veil` source files to the same IR the ONNX importer builds.
//!
//! [`loader::Loader`] reads files and resolves `import`s (the stdlib modules come from
//! `veil-stdlib`); [`lower::lower_model`] evaluates a model into a graph, unrolling `repeat`,
//! inlining functions and fetching parameters from a [`lower::WeightSource`];
//! [`lower::instantiate`] inlines one function into an existing graph (how the backend uses the
//! stdlib approximations). Errors carry `file:line:col` and a caret ([`error::DslError`]).

pub mod ast;
pub mod builtins;
pub mod error;
pub mod loader;
pub mod lower;
pub mod parse;

pub use error::DslError;
pub use loader::Loader;
pub use lower::{instantiate, lower_model, LoweredModel, Val, WeightSource};

/// A loader that resolves `import` against veil's stdlib.
pub fn stdlib_loader() -> Loader {
    Loader::new(veil_stdlib::MODULES)
}
