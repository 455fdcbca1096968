//! The program decoder and validator on arbitrary bytes (the payload hash made right, so
//! mutations get past it): an error or a valid program, which is then disassembled and costed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = veil_compiler::fuzzing::bytecode_load(data);
});
