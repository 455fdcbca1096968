//! Helpers shared by the CLI test files: run the `veil` binary from the repo root, scratch
//! directories, and the assertions on how a run ended.
#![allow(dead_code, reason = "each test file uses a subset")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The bundled BERT-tiny export and its first test set, relative to the repo root.
pub const BERT: &str = "tests/fixtures/models/bert-tiny-random/model.dynamo_opset17.onnx";
/// Inputs and onnxruntime output of BERT-tiny's first test set.
pub const DATA: &str = "tests/fixtures/models/bert-tiny-random/test_data_set_0";

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The client cache the tests' `veil connect` uses (never the user's own).
pub fn cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-cache", env!("CARGO_CRATE_NAME")))
}

/// `veil` in the repo root, with a cache directory of its own.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_veil"));
    c.current_dir(root()).env("XDG_CACHE_HOME", cache_home());
    c
}

/// Runs `veil ARGS` in the repo root.
pub fn veil<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    command().args(args).output().expect("veil runs")
}

/// A fresh scratch directory for one test, under cargo's scratch directory for integration
/// tests (`target/tmp`) by a name fixed per test binary: each run empties it again, so runs
/// do not pile directories up in `/tmp` (they did: thousands, 3.5 GB).
pub fn tmp(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", env!("CARGO_CRATE_NAME")));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a clean failure: exit code 1, the message in stderr, no panic.
pub fn fails_with(out: &Output, msg: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(msg), "expected `{msg}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Asserts success; returns stdout.
pub fn ok(out: &Output) -> String {
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stdout: {so}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    so
}

/// BERT-tiny's inputs as `NAME=FILE.npy`.
pub fn bert_assignments() -> Vec<String> {
    ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}={DATA}/input_{i}.npy"))
        .collect()
}

/// BERT-tiny's inputs as `--input NAME=FILE.npy` flags.
pub fn bert_input_flags() -> Vec<String> {
    bert_assignments().into_iter().flat_map(|a| ["--input".to_string(), a]).collect()
}
