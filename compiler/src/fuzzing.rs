//! Entry points of the fuzz targets (`fuzz/`), here so the stable test suite runs the same
//! code over the committed corpora (`tests/fuzz_corpora.rs`): each must return, never panic.
//!
//! A file that records a hash of its own content or of its program gets that hash made right
//! before it is read (the program's payload hash, the client part's and the server weights'
//! program hash): a mutation then reaches the decoder and the checks behind the comparison
//! instead of stopping at it. Each entry point says how far its input got ([`Reached`]), so
//! the corpus tests can show that the seeds get past the first gate.

use crate::compile::artifacts;
use crate::dsl::WeightSource;
use crate::frontend::onnx::{import_bytes, ImportOptions};
use crate::ir::{DType, TensorType};
use crate::weights::SafetensorsSource;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::OnceLock;
use veil_isa::{IoDecl, Party, Program};

/// How far an input got through its reader.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reached {
    /// Refused by the first step: not this kind of file, or not decodable.
    Rejected,
    /// Decoded, then refused by the checks behind the decoder (program validation, the
    /// program match, graph verification).
    Checked,
    /// Read and accepted.
    Accepted,
}

/// Where a program file keeps the SHA-256 of its payload, and where the payload starts
/// (`veil_isa::program`: magic, version, hash, payload).
const PROGRAM_HASH: std::ops::Range<usize> = 12..44;

/// Imports `data` as an ONNX model (sequence dims bound to 8) and runs the import passes.
pub fn onnx_import(data: &[u8]) -> Reached {
    let opts = ImportOptions { seq: Some(8), ..ImportOptions::default() };
    let Ok(mut g) = import_bytes(data, "<fuzz>", &opts) else { return Reached::Rejected };
    match crate::passes::run(&mut g, &mut crate::passes::import_pipeline()) {
        Ok(_) => Reached::Accepted,
        Err(_) => Reached::Checked,
    }
}

/// Parses and loads `data` as DSL source next to the stdlib.
pub fn dsl_parse(data: &[u8]) -> Reached {
    let Ok(src) = std::str::from_utf8(data) else { return Reached::Rejected };
    let mut l = crate::dsl::stdlib_loader();
    match l.load_source("<fuzz>", src.to_string()) {
        Ok(_) => Reached::Accepted,
        Err(_) => Reached::Rejected,
    }
}

/// Valid programs up to this many instructions are also disassembled and costed. Both are
/// linear in the program and take five times as long as decoding and validating it: small
/// programs cover them, and the fuzzer's time goes to the decoder and the validator.
const DISASSEMBLE_UP_TO: usize = 1024;

/// Decodes `data` as a program file, its payload hash made right, and validates it; a valid
/// program then goes through the leakage analysis, a dynamic one is instantiated at a few
/// lengths, and a small one is disassembled and costed (what `veil inspect` and `veil cost`
/// do).
pub fn bytecode_load(data: &[u8]) -> Reached {
    let mut file = data.to_vec();
    if file.len() >= PROGRAM_HASH.end {
        let h = Sha256::digest(&file[PROGRAM_HASH.end..]);
        file[PROGRAM_HASH].copy_from_slice(&h);
    }
    let Ok(p) = Program::from_bytes(&file) else { return Reached::Rejected };
    if veil_isa::validate(&p).is_err() {
        return Reached::Checked;
    }
    // The leakage analysis a party runs on a program it did not compile; refusing the
    // program is one of its answers.
    let _ = veil_isa::verify(&p);
    // What the VM and the dealer do at a `setlen`.
    if let Some(d) = &p.dynamic {
        for n in [1, d.max_len / 2] {
            let _ = d.shrink(&p, &p, d.max_len, n);
        }
    }
    if p.setup.len() + p.body.len() <= DISASSEMBLE_UP_TO {
        let _ = veil_isa::disas::disassemble(&p);
        let _ = veil_isa::disas::summary(&p);
        let _ = veil_isa::cost::program_cost(&p);
        if let Some(d) = &p.dynamic {
            let _ = veil_isa::cost::program_cost_at(&p, &[d.max_len / 2]);
        }
    }
    Reached::Accepted
}

/// Parses `data` as an `.npy` file; an array read must agree with its shape and survive being
/// written and read again (what `veil run --output` writes).
pub fn npy_read(data: &[u8]) -> Reached {
    let Ok(t) = crate::npy::parse(data, "<fuzz>.npy") else { return Reached::Rejected };
    let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    assert_eq!(numel, Some(t.numel()), "shape {:?} disagrees with the data", t.shape);
    let bytes = crate::npy::to_bytes(&t);
    let again = crate::npy::parse(&bytes, "<fuzz>.npy").expect("veil reads the .npy it writes");
    assert_eq!(crate::npy::to_bytes(&again), bytes, "an .npy changes when written and read");
    Reached::Accepted
}

/// Reads `data` as a safetensors weight file the ways veil does: every tensor by name, as a
/// DSL model declaring its own type or f32 takes it (`--weights`), and as the server's file of
/// a program declaring every tensor in it (the program hash in the metadata made right).
pub fn safetensors_weights(data: &[u8]) -> Reached {
    const PATH: &str = "<fuzz>.server.safetensors";
    let Ok(mut src) = SafetensorsSource::from_bytes(data.to_vec(), PATH.into()) else {
        return Reached::Rejected;
    };
    let _ = src.metadata();
    let mut program = Program { frac_bits: 16, ..Program::default() };
    for name in src.names() {
        let mut shape = vec![];
        if let Ok(t) = src.tensor(&name) {
            let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            assert_eq!(
                numel,
                Some(t.numel()),
                "`{name}`: shape {:?} disagrees with the data",
                t.shape
            );
            let ty = t.ty();
            let _ = src.get(&name, &ty);
            let _ = src.get(&name, &TensorType::new(DType::F32, ty.shape.clone()));
            shape = ty.shape.iter().map(|&d| d as u32).collect();
        }
        // Declared even when unreadable: the server's reader must refuse it by name.
        let server = Party::Server;
        program.weights.push(IoDecl {
            name,
            buf: veil_isa::Buf(0),
            party: server,
            frac_bits: 16,
            shape,
        });
    }
    // A weight of the client's is not the server file's business.
    program.weights.push(IoDecl {
        name: "<client weight>".into(),
        buf: veil_isa::Buf(0),
        party: Party::Client,
        frac_bits: 16,
        shape: vec![],
    });
    let mut file = data.to_vec();
    set_program_hash(&mut file, &program.hash());
    let path = Path::new(PATH);
    match artifacts::parse_server(file, path, &program, Path::new("<fuzz>.vbc")) {
        Ok(_) => Reached::Accepted,
        Err(_) => Reached::Checked,
    }
}

/// Writes `hash` (hex) over the program hash recorded in a safetensors file's metadata, when
/// the header holds one of the right length.
fn set_program_hash(file: &mut [u8], hash: &[u8; 32]) {
    let Some(n) = file.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
        return;
    };
    let end = usize::try_from(n).ok().and_then(|n| n.checked_add(8)).unwrap_or(usize::MAX);
    let Some(header) = file.get_mut(8..end) else { return };
    let key = format!("\"{}\":\"", artifacts::HASH_KEY);
    let Some(at) = header.windows(key.len()).position(|w| w == key.as_bytes()) else { return };
    let value = at + key.len();
    if header.get(value + 64) == Some(&b'"') {
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        header[value..value + 64].copy_from_slice(hex.as_bytes());
    }
}

/// The program the client-part target checks parts against.
fn client_program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| Program {
        frac_bits: 16,
        meta: vec![("model".into(), "fuzz".into())],
        ..Program::default()
    })
}

/// Decodes `data` as a client part (`NAME.client`) and checks it as `veil connect` does: the
/// recorded program hash (made right first) and the client's graph.
pub fn client_part(data: &[u8]) -> Reached {
    let path = Path::new("<fuzz>.client");
    let Ok(mut c) = artifacts::decode_client(data, path) else { return Reached::Rejected };
    let program = client_program();
    c.program_hash = program.hash();
    match artifacts::check_client(&c, path, program, Path::new("<fuzz>.vbc")) {
        Ok(()) => Reached::Accepted,
        Err(_) => Reached::Checked,
    }
}
