//! The fuzz targets' seed corpora and every input a fuzzer ever crashed on (committed under
//! fuzz/corpus/<target>/), run through the same entry points on stable: each must return.

use std::path::Path;
use veil_compiler::fuzzing;

fn each(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        f(&bytes);
        // Damaged copies too: every prefix length class and a flipped byte.
        for cut in [0, 1, bytes.len() / 3, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            f(&bytes[..cut.min(bytes.len())]);
        }
        if !bytes.is_empty() {
            let mut b = bytes.clone();
            let i = b.len() / 2;
            b[i] ^= 0x5a;
            f(&b);
        }
        n += 1;
    }
    n
}

#[test]
fn onnx_import_corpus() {
    assert!(each("onnx_import", fuzzing::onnx_import) >= 10);
}

#[test]
fn dsl_parse_corpus() {
    assert!(each("dsl_parse", fuzzing::dsl_parse) >= 10);
}

#[test]
fn bytecode_load_corpus() {
    assert!(each("bytecode_load", fuzzing::bytecode_load) >= 3);
}
