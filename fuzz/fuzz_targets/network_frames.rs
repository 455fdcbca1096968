//! A peer's bytes on a new connection: the hello, then frames read against exact and bounded
//! expectations, and every control-message decoder on each payload; never a panic, never a
//! buffer larger than the expectation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = veil_vm::fuzzing::network_frames(data);
});
