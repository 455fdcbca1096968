//! The DSL parser and loader on arbitrary text: an error or a module, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = veil_compiler::fuzzing::dsl_parse(data);
});
