//! Entry points of the fuzz targets (`fuzz/`), here so the stable test suite runs the same
//! code over the committed corpora (`tests/fuzz_corpora.rs`): each must return, never panic.

use crate::frontend::onnx::{import_bytes, ImportOptions};

/// Imports `data` as an ONNX model (sequence dims bound to 8) and runs the import passes.
pub fn onnx_import(data: &[u8]) {
    let opts = ImportOptions { seq: Some(8), ..ImportOptions::default() };
    if let Ok(mut g) = import_bytes(data, "<fuzz>", &opts) {
        let _ = crate::passes::run(&mut g, &mut crate::passes::import_pipeline());
    }
}

/// Parses and loads `data` as DSL source next to the stdlib.
pub fn dsl_parse(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let mut l = crate::dsl::stdlib_loader();
    let _ = l.load_source("<fuzz>", src.to_string());
}

/// Decodes `data` as a program file and validates it.
pub fn bytecode_load(data: &[u8]) {
    if let Ok(p) = veil_isa::Program::from_bytes(data) {
        let _ = veil_isa::validate(&p);
    }
}
