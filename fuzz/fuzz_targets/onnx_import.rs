//! The ONNX importer on arbitrary bytes: an error or a graph, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = veil_compiler::fuzzing::onnx_import(data);
});
