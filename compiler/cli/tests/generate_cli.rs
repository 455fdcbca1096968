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

const WITH_PAST: &str = "tests/fixtures/models/gpt2-with-past";

/// Optimum's merged decoder (an `If` on `use_cache_branch`, past key/values as inputs):
/// generation binds its cache interface away and gives onnxruntime's greedy tokens; eval takes
/// the branch from the `use_cache_branch` input given; the decoder with past alone (traced
/// for one token) generates the same tokens with its causal mask put back.
#[test]
fn generate_from_an_optimum_export_with_past() {
    let merged = format!("{WITH_PAST}/decoder_model_merged.onnx");
    let prompt = format!("{WITH_PAST}/generate/prompt.npy");
    let want =
        veil_compiler::npy::read(&root().join(WITH_PAST).join("generate/greedy.npy")).unwrap();
    let want: Vec<String> = want.to_f64_vec().iter().map(|&x| (x as i64).to_string()).collect();
    for file in [merged.clone(), format!("{WITH_PAST}/decoder_with_past_model.onnx")] {
        let s = ok(&veil(&[
            "generate",
            &file,
            "--seq",
            "32",
            "--prompt-ids",
            &prompt,
            "--max-new",
            "12",
            "--in-process",
        ]));
        assert!(s.contains(&format!("generated [{}]", want.join(", "))), "{file}: {s}");
        assert!(s.contains("plaintext reference (no cache, f64): identical (12 tokens)"), "{s}");
    }
    let set = root().join(WITH_PAST).join("test_data_set_3");
    let names = [
        "input_ids",
        "attention_mask",
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
        "use_cache_branch",
    ];
    let inputs: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}={}", set.join(format!("input_{i}.npy")).display()))
        .collect();
    let mut args = vec!["eval", merged.as_str()];
    for i in &inputs {
        args.extend(["--input", i.as_str()]);
    }
    let s = ok(&veil(&args));
    assert!(s.contains("present.1.value: f32[1,2,6,32]"), "{s}");
}

/// The merged decoder's `If` compiles one branch: without `--branch` the message says which
/// input to fix and how; a `--branch` naming no input is refused.
#[test]
fn merged_decoder_branch_must_be_fixed_by_name() {
    let dir = tmp("with-past-branch");
    let merged = format!("{WITH_PAST}/decoder_model_merged.onnx");
    let out = dir.join("m.vbc");
    let dims = [
        "--dim",
        "sequence_length=1",
        "--dim",
        "past_sequence_length=5",
        "--dim",
        "attention_mask_sequence_length=6",
    ];
    let mut args = vec!["compile", merged.as_str(), "-o", out.to_str().unwrap()];
    args.extend(dims);
    fails_with(&veil(&args), "--branch use_cache_branch=false");
    let mut bad = args.clone();
    bad.extend(["--branch", "use_cache=true"]);
    fails_with(&veil(&bad), "there is no input `use_cache` to fix");
    args.extend(["--branch", "use_cache_branch=true"]);
    ok(&veil(&args));
}
