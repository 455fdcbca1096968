//! The fuzz targets' seed corpora and every input a fuzzer ever crashed on (committed under
//! fuzz/corpus/<target>/), run through the same entry points on stable: each must return,
//! whole and damaged. The seeds (`seed-*`) must also get as far as they were written to get,
//! which shows that the harnesses' hash fix-ups let mutations reach the decoders and checks
//! (a seed that no longer does is stale: regenerate the seeds with
//! `cargo test -p veil-compiler --test fuzz_corpora -- --ignored write_seed_corpora`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use veil_compiler::fuzzing::{self, Reached};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Every file of a corpus, sorted by name.
fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// Runs every file of `target` whole and damaged through `f`; returns how far each whole file
/// got, by name.
fn each(target: &str, f: fn(&[u8]) -> Reached) -> BTreeMap<String, Reached> {
    let mut got = BTreeMap::new();
    for (name, bytes) in files(target) {
        got.insert(name, f(&bytes));
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
    }
    got
}

/// Every seed of `got` named in `want` reached what `want` says; at least `min` files ran.
fn expect(target: &str, got: &BTreeMap<String, Reached>, want: &[(&str, Reached)], min: usize) {
    assert!(got.len() >= min, "{target}: {} files, expected at least {min}", got.len());
    for &(name, reached) in want {
        let have = got.get(name).unwrap_or_else(|| panic!("{target}: seed {name} is missing"));
        assert_eq!(
            *have, reached,
            "{target}/{name}: the seed got {have:?}, written to get {reached:?} (stale? see the \
             module docs)"
        );
    }
}

use Reached::{Accepted, Checked, Rejected};

#[test]
fn onnx_import_corpus() {
    expect("onnx_import", &each("onnx_import", fuzzing::onnx_import), &[], 10);
}

#[test]
fn dsl_parse_corpus() {
    expect("dsl_parse", &each("dsl_parse", fuzzing::dsl_parse), &[], 10);
}

const PROGRAMS: &[&str] = &[
    "seed-bert-mini-frozen.vbc",
    "seed-bert-mini-pruned.vbc",
    "seed-bert-mini.vbc",
    "seed-gelu.vbc",
    "seed-gpt2-mini.vbc",
    "seed-layernorm.vbc",
    "seed-matmul.vbc",
    "seed-softmax.vbc",
];

#[test]
fn bytecode_load_corpus() {
    let want: Vec<_> = PROGRAMS.iter().map(|&n| (n, Accepted)).collect();
    expect("bytecode_load", &each("bytecode_load", fuzzing::bytecode_load), &want, 8);
}

/// The instrument behind "the bytecode target reaches `validate`": single-byte mutations of
/// every program seed's payload, counted by how far they got. The file's SHA-256 would stop
/// every one of them at the hash check; with the harness re-hashing, most decode and are
/// validated, and the validator refuses some.
#[test]
fn bytecode_mutations_reach_the_validator() {
    let mut tally: BTreeMap<Reached, usize> = BTreeMap::new();
    for (name, bytes) in files("bytecode_load") {
        if !PROGRAMS.contains(&name.as_str()) {
            continue;
        }
        // At most ~100 positions per seed, spread over the payload.
        let step = (bytes.len() - 44).div_ceil(100).max(1);
        for i in (44..bytes.len()).step_by(step) {
            for flip in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                // Without the harness's fix-up the file's hash check refuses every one.
                let unfixed = veil_isa::Program::from_bytes(&b);
                assert_eq!(unfixed, Err(veil_isa::DecodeError::HashMismatch), "{name} at {i}");
                *tally.entry(fuzzing::bytecode_load(&b)).or_default() += 1;
            }
        }
    }
    let n: usize = tally.values().sum();
    let (checked, accepted) = (tally.get(&Checked).copied(), tally.get(&Accepted).copied());
    let validated = checked.unwrap_or(0) + accepted.unwrap_or(0);
    eprintln!("{n} single-byte mutations: {tally:?}");
    assert!(validated * 3 >= n, "only {validated} of {n} mutations reached validate: {tally:?}");
    assert!(checked.unwrap_or(0) * 20 >= n, "the validator refused too few: {tally:?}");
}

#[test]
fn npy_read_corpus() {
    let got = each("npy_read", fuzzing::npy_read);
    let want: Vec<_> =
        got.keys().filter(|n| n.starts_with("seed-")).map(|n| (n.as_str(), Accepted)).collect();
    expect("npy_read", &got, &want, 12);
}

#[test]
fn safetensors_weights_corpus() {
    let want = [
        ("seed-bert-mini.server.safetensors", Accepted),
        ("seed-bert-mini-frozen.server.safetensors", Accepted),
        ("seed-dtypes.safetensors", Accepted),
        ("seed-no-metadata.safetensors", Checked),
        ("seed-u8.safetensors", Checked),
    ];
    expect(
        "safetensors_weights",
        &each("safetensors_weights", fuzzing::safetensors_weights),
        &want,
        5,
    );
}

#[test]
fn client_part_corpus() {
    let want = [
        ("seed-bert-mini.client", Accepted),
        ("seed-bert-mini-frozen.client", Accepted),
        ("seed-bert-mini-pruned.client", Accepted),
        ("seed-gpt2-mini.client", Accepted),
        ("seed-gelu.client", Accepted),
    ];
    expect("client_part", &each("client_part", fuzzing::client_part), &want, 5);
}

/// Network frames: the committed seeds are the ones the VM writes today and each is accepted
/// for as many messages as it holds (so mutations start past the hello and the framing);
/// every file, whole and damaged, returns.
#[test]
fn network_frames_corpus() {
    let files = files("network_frames");
    assert!(files.len() >= 5, "network_frames: {} files", files.len());
    for (name, bytes, messages) in veil_vm::fuzzing::network_seeds() {
        let (_, have) = files
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("network_frames: seed {name} is missing"));
        assert_eq!(have, &bytes, "network_frames/{name} is stale (see the module docs)");
        assert_eq!(veil_vm::fuzzing::network_frames(&bytes), messages, "{name}");
    }
    for (_, bytes) in files {
        veil_vm::fuzzing::network_frames(&bytes);
        for cut in [0, 1, 60, 61, 69, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            veil_vm::fuzzing::network_frames(&bytes[..cut.min(bytes.len())]);
        }
    }
    // Control: a hello cut short of its first frame header accepts nothing.
    let (_, seed, _) = &veil_vm::fuzzing::network_seeds()[0];
    assert_eq!(veil_vm::fuzzing::network_frames(&seed[..64]), 0);
}

#[test]
fn a_damaged_seed_is_refused_not_accepted() {
    // Controls for the tallies above: a header that is not the format's stops at the first
    // gate in every target.
    for (target, f) in [
        ("bytecode_load", fuzzing::bytecode_load as fn(&[u8]) -> Reached),
        ("npy_read", fuzzing::npy_read),
        ("safetensors_weights", fuzzing::safetensors_weights),
        ("client_part", fuzzing::client_part),
    ] {
        for (name, mut bytes) in files(target).into_iter().filter(|(n, _)| n.starts_with("seed-")) {
            bytes[1] ^= 0xff;
            let got = f(&bytes);
            assert_eq!(got, Rejected, "{target}/{name} with a broken header got {got:?}");
        }
    }
}

/// Writes the seed corpora of the bytecode, client-part, safetensors and npy targets: small
/// models compiled with the library the way `veil compile` does, and hand-made files covering
/// every element type and header form. Run after a format change (ignored: it rewrites files).
#[test]
#[ignore]
fn write_seed_corpora() {
    seeds::write_all();
}

mod seeds {
    use std::collections::HashMap;
    use std::path::Path;
    use veil_compiler::backend::partition::Vis;
    use veil_compiler::compile::{artifacts, compile, pruned, CompileOptions, Compiled};
    use veil_compiler::dsl::{lower_model, stdlib_loader};
    use veil_compiler::ir::{DType, Data, Graph, Tensor};
    use veil_compiler::weights::{write_safetensors, write_safetensors_with, RandomSource};
    use veil_compiler::{npy, passes};

    /// BERT-tiny and GPT-2-tiny shrunk to a handful of elements per axis.
    const MINI: &[(&str, f64)] = &[
        ("S", 8.0),
        ("H", 8.0),
        ("NH", 2.0),
        ("D", 4.0),
        ("FF", 16.0),
        ("L", 1.0),
        ("V", 16.0),
        ("P", 8.0),
    ];

    fn repo() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Lowers `model` from the DSL `source` (a path under the repository, or text) with
    /// constants overridden and seeded random weights, and runs the import passes.
    fn lower(source: &str, model: &str, consts: &[(&str, f64)]) -> Graph {
        let mut l = stdlib_loader();
        for &(c, v) in consts {
            l.override_const(c, v);
        }
        let file = repo().join(source);
        if file.is_file() {
            l.load_path(&file.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        } else {
            l.load_source("<seed>", source.to_string()).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut g = lower_model(&l, model, &mut RandomSource::new(1))
            .unwrap_or_else(|e| panic!("{e}"))
            .graph;
        passes::run(&mut g, &mut passes::import_pipeline()).unwrap();
        g
    }

    fn vis(public: &'static str) -> impl Fn(&str) -> Vis {
        move |n: &str| {
            if !public.is_empty() && n.starts_with(public) {
                Vis::Public
            } else {
                Vis::Server
            }
        }
    }

    /// Writes the three files of `c` as `<dir>/seed-<name>.vbc`, `.client`, `.server.safetensors`
    /// and moves them to the corpora of their targets (the server file only when `server`).
    fn place(c: &Compiled, name: &str, server: bool) {
        let tmp = std::env::temp_dir().join(format!("veil-seeds-{}", std::process::id()));
        let paths = artifacts::write(c, &tmp.join(format!("seed-{name}.vbc"))).unwrap();
        let corpus = repo().join("fuzz/corpus");
        let to = |t: &str, f: &str| corpus.join(t).join(f);
        std::fs::rename(&paths.program, to("bytecode_load", &format!("seed-{name}.vbc"))).unwrap();
        std::fs::rename(&paths.client, to("client_part", &format!("seed-{name}.client"))).unwrap();
        if server {
            let f = format!("seed-{name}.server.safetensors");
            std::fs::rename(&paths.server, to("safetensors_weights", &f)).unwrap();
        } else {
            std::fs::remove_file(&paths.server).unwrap();
        }
    }

    fn write_programs() {
        let opts = CompileOptions::default();
        let bert = "examples/models/bert-tiny.veil";
        let g = lower(bert, "bert_tiny", MINI);
        place(&compile(g.clone(), &vis(""), &opts).unwrap(), "bert-mini", true);
        place(&compile(g, &vis("m.embeddings."), &opts).unwrap(), "bert-mini-frozen", true);
        let g = lower("examples/models/gpt2-tiny.veil", "gpt2_tiny", MINI);
        place(&compile(g, &vis(""), &opts).unwrap(), "gpt2-mini", false);

        // A dynamic program: token pruning after the one attention layer.
        let cls = "examples/models/bert-tiny-cls.veil";
        let at = |n: usize| -> Result<Graph, veil_compiler::prune::reference::GraphError> {
            let mut consts = MINI.to_vec();
            consts.retain(|(c, _)| *c != "S");
            consts.push(("S", n as f64));
            Ok(lower(cls, "bert_tiny_cls", &consts))
        };
        let cfg = veil_compiler::prune::PruneConfig { theta: vec![Some(0.05)], protect: 1 };
        let c = pruned::compile_pruned(&at, 8, &cfg, &vis(""), &opts, &mut |_| {}).unwrap();
        assert!(c.program.dynamic.is_some());
        place(&c, "bert-mini-pruned", false);

        // One nonlinearity each: small programs the fuzzer mutates quickly.
        let tiny = |body: &str| {
            let lines = [
                "model tiny {",
                "    input x: client f32[2, 4];",
                "    param w: private f32[2, 4] = \"w\";",
                "    param g: private f32[4] = \"g\";",
                &format!("    output y = {body};"),
                "}",
            ];
            lines.join("\n")
        };
        for (name, body) in [
            ("gelu", "gelu(x * w)"),
            ("softmax", "softmax(x + w, axis = -1)"),
            ("layernorm", "layernorm(x + w, g, g, eps = 0.00001)"),
            ("matmul", "x @ transpose(w, [1, 0])"),
        ] {
            let g = lower(&tiny(body), "tiny", &[]);
            place(&compile(g, &vis(""), &opts).unwrap(), name, false);
        }
    }

    fn f32s(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.5 - 1.0).collect()
    }

    fn write_safetensors_seeds() {
        let dir = repo().join("fuzz/corpus/safetensors_weights");
        let t = |dtype: DType, shape: Vec<usize>, data: Data| Tensor { dtype, shape, data };
        let every = vec![
            ("a.f32".to_string(), Tensor::f32(vec![2, 3], f32s(6))),
            ("b.f16".into(), t(DType::F16, vec![4], Data::F32(f32s(4)))),
            ("c.bf16".into(), t(DType::BF16, vec![2, 2], Data::F32(f32s(4)))),
            ("d.f64".into(), t(DType::F64, vec![3], Data::F64(vec![1.5, -2.0, 1e300]))),
            ("e.i64".into(), Tensor::i64(vec![2], vec![i64::MIN, 7])),
            ("f.i32".into(), t(DType::I32, vec![2], Data::I64(vec![-3, 1 << 30]))),
            ("g.bool".into(), Tensor::bool(vec![3], vec![true, false, true])),
            ("h.scalar".into(), Tensor::f32(vec![], vec![2.5])),
            ("i.empty".into(), Tensor::f32(vec![0, 4], vec![])),
        ];
        // A hash of the right length for the harness to overwrite.
        let meta: HashMap<String, String> =
            [(artifacts::HASH_KEY.to_string(), "0".repeat(64))].into_iter().collect();
        write_safetensors_with(&dir.join("seed-dtypes.safetensors"), &every, Some(meta.clone()))
            .unwrap();
        let u8s = vec![("u.u8".to_string(), t(DType::U8, vec![3], Data::I64(vec![0, 1, 255])))];
        write_safetensors_with(&dir.join("seed-u8.safetensors"), &u8s, Some(meta)).unwrap();
        write_safetensors(&dir.join("seed-no-metadata.safetensors"), &every[..2]).unwrap();
    }

    fn write_npy_seeds() {
        let dir = repo().join("fuzz/corpus/npy_read");
        let ints =
            |dtype: DType, v: Vec<i64>| Tensor { dtype, shape: vec![v.len()], data: Data::I64(v) };
        let arrays = [
            ("f32", Tensor::f32(vec![2, 3, 4], f32s(24))),
            (
                "f64",
                Tensor { dtype: DType::F64, shape: vec![2], data: Data::F64(vec![0.25, -1e-300]) },
            ),
            (
                "f16",
                Tensor {
                    dtype: DType::F16,
                    shape: vec![3],
                    data: Data::F32(vec![1.0, -0.5, 65504.0]),
                },
            ),
            ("i64", ints(DType::I64, vec![i64::MIN, -1, 0, i64::MAX])),
            ("i32", ints(DType::I32, vec![-5, 1 << 30])),
            ("i16", ints(DType::I16, vec![-300, 300])),
            ("i8", ints(DType::I8, vec![-128, 127])),
            ("u8", ints(DType::U8, vec![0, 255])),
            ("u16", ints(DType::U16, vec![65535])),
            ("u32", ints(DType::U32, vec![1 << 31])),
            ("u64", ints(DType::U64, vec![-1])),
            ("bool", Tensor::bool(vec![2, 2], vec![true, false, false, true])),
            ("scalar", Tensor::f32(vec![], vec![3.0])),
            ("empty", Tensor::f32(vec![0, 3], vec![])),
        ];
        for (name, t) in arrays {
            std::fs::write(dir.join(format!("seed-{name}.npy")), npy::to_bytes(&t)).unwrap();
        }
        // Format 2.0 and 3.0 headers (4-byte header length) and a Fortran-ordered array.
        let v1 = npy::to_bytes(&Tensor::f32(vec![2, 2], f32s(4)));
        let hlen = u16::from_le_bytes([v1[8], v1[9]]) as usize;
        for major in [2u8, 3] {
            let mut b = b"\x93NUMPY".to_vec();
            b.extend_from_slice(&[major, 0]);
            b.extend_from_slice(&(hlen as u32).to_le_bytes());
            b.extend_from_slice(&v1[10..]);
            std::fs::write(dir.join(format!("seed-v{major}.npy")), b).unwrap();
        }
        // Refused by the reader (not a seed): the same bytes with `'fortran_order': True `.
        let at = v1.windows(5).position(|w| w == b"False").unwrap();
        let mut fortran = v1.clone();
        fortran[at..at + 5].copy_from_slice(b"True ");
        std::fs::write(dir.join("fortran-order.npy"), fortran).unwrap();
        let fixture =
            repo().join("tests/fixtures/models/bert-tiny-random/test_data_set_0/input_0.npy");
        std::fs::copy(fixture, dir.join("seed-bert-tiny-input-ids.npy")).unwrap();
    }

    pub fn write_all() {
        let corpus = repo().join("fuzz/corpus");
        for t in
            ["bytecode_load", "client_part", "safetensors_weights", "npy_read", "network_frames"]
        {
            let dir = corpus.join(t);
            std::fs::create_dir_all(&dir).unwrap();
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.file_name().unwrap().to_string_lossy().starts_with("seed-") {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        write_programs();
        write_safetensors_seeds();
        write_npy_seeds();
        for (name, bytes, _) in veil_vm::fuzzing::network_seeds() {
            std::fs::write(corpus.join("network_frames").join(name), bytes).unwrap();
        }
    }
}
