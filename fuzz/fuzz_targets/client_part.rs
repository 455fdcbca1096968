//! The client's part (`NAME.client`) on arbitrary bytes, decoded and checked as `veil connect`
//! does (the program hash made right): an error or a verified graph, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = veil_compiler::fuzzing::client_part(data);
});
