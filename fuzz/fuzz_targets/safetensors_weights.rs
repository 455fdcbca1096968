//! Safetensors weight files as veil reads them (DSL `--weights`, the server's
//! `NAME.server.safetensors`) on arbitrary bytes: an error or the tensors, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = veil_compiler::fuzzing::safetensors_weights(data);
});
