//! `veil generate` and `veil compile --generate`: the tokens of a two-party run equal the
//! plaintext generation's, and every bad input ends in a clear message.

mod common;

use common::{fails_with, ok, root, tmp, veil};
use veil_compiler::ir::Tensor;

const GPT2: &str = "tests/fixtures/models/gpt2-tiny-random/model.dynamo_opset18.onnx";
const PROMPT: &str = "examples/prompts/gpt2-tiny-8.npy";

#[test]
fn generate_runs_two_party_and_matches_plaintext() {
    let dir = tmp("generate");
    let ids = dir.join("ids.npy");
    let out = veil(&[
        "generate",
        GPT2,
        "--prompt-ids",
        PROMPT,
        "--max-new",
        "4",
        "--temperature",
        "1",
        "--top-k",
        "50",
        "--seed",
        "7",
        "--in-process",
        "-o",
        ids.to_str().unwrap(),
    ]);
    let s = ok(&out);
    assert!(s.contains("plaintext reference (no cache, f64): identical (4 tokens)"), "{s}");
    assert!(s.contains("per decode step (mean of 3)"), "{s}");
    let t = veil_compiler::npy::read(&ids).unwrap();
    assert_eq!(t.shape, vec![1, 12]);
    let prompt = veil_compiler::npy::read(&root().join(PROMPT)).unwrap();
    assert_eq!(t.to_f64_vec()[..8], prompt.to_f64_vec()[..]);
}

#[test]
fn compile_generate_then_run() {
    let dir = tmp("compile-generate");
    let vbc = dir.join("g.vbc");
    let s = ok(&veil(&[
        "compile",
        GPT2,
        "--generate",
        "2",
        "--prompt-len",
        "8",
        "-o",
        vbc.to_str().unwrap(),
    ]));
    assert!(s.contains("token.1"), "the reveals list the tokens: {s}");
    let input = format!("input_ids={}", root().join(PROMPT).display());
    let s = ok(&veil(&["run", vbc.to_str().unwrap(), "--in-process", "--input", &input]));
    assert!(s.contains("output `token.1`"), "{s}");
    assert!(s.contains("max abs error 0.000e0"), "tokens equal the reference's: {s}");
}

#[test]
fn bad_generation_inputs_are_refused() {
    let dir = tmp("generate-bad");
    fails_with(
        &veil(&["compile", GPT2, "--generate", "2", "-o", dir.join("x.vbc").to_str().unwrap()]),
        "--generate needs --prompt-len",
    );
    let bert = common::BERT;
    fails_with(
        &veil(&["generate", bert, "--prompt-ids", PROMPT, "--in-process"]),
        "generation needs exactly one input, the token ids",
    );
    fails_with(
        &veil(&["generate", GPT2, "--prompt-ids", PROMPT, "--max-new", "200", "--in-process"]),
        "leaves room for at most 121 new tokens",
    );
    let floats = dir.join("floats.npy");
    veil_compiler::npy::write(&floats, &Tensor::f32([1, 2], vec![1.0, 2.0])).unwrap();
    fails_with(
        &veil(&["generate", GPT2, "--prompt-ids", floats.to_str().unwrap(), "--in-process"]),
        "expected integer token ids",
    );
    fails_with(
        &veil(&["generate", GPT2, "--prompt-ids", PROMPT, "--temperature=-1"]),
        "--temperature must be 0",
    );
    fails_with(
        &veil(&["generate", GPT2, "--prompt-ids", PROMPT, "--top-k", "5"]),
        "--top-k samples among the K most likely tokens: it needs --temperature above 0",
    );
    assert!(!dir.join("x.vbc").exists(), "nothing written for a refused compile");
}

#[test]
fn generate_over_tls_processes_reports_each_step() {
    let out = veil(&["generate", GPT2, "--prompt-ids", PROMPT, "--max-new", "2"]);
    let s = ok(&out);
    assert!(s.contains("identical (2 tokens)"), "{s}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client: prefill done") && err.contains("client: tok1 done"), "{err}");
}
