//! The `.npy` reader on arbitrary bytes: an error or an array that agrees with its shape and
//! survives being written and read again.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = veil_compiler::fuzzing::npy_read(data);
});
