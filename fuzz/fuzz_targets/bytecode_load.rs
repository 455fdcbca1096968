//! The bytecode loader and validator on arbitrary bytes: an error or a valid program.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veil_compiler::fuzzing::bytecode_load(data);
});
