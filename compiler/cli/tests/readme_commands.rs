//! Every ```sh block of the README runs as written on a fresh clone, except those listed in
//! `SKIPPED` with the reason: `cargo run --release --` becomes the `veil` binary this test
//! harness built, and `target/` a scratch directory (so the commands write nothing into the
//! checkout). A block that still calls cargo must be listed, so a new README command is
//! either run here or skipped by name.

mod common;

use common::{root, tmp};
use std::process::Command;
use std::time::Instant;

/// Blocks not run, by a line they contain, and why.
const SKIPPED: &[(&str, &str)] = &[
    ("cargo build --release", "builds the release binary: the test runs the one it was built with"),
    ("cargo test --workspace", "the test suite itself"),
    ("--listen 127.0.0.1:7701", "three terminals of long-running roles (serve_cli.rs runs them)"),
    ("cargo bench -p veil-vm", "benchmarks, BERT-base and GPT-2 small shapes"),
    ("bench --serve target/bert-base.vbc", "BERT-base load benchmark: minutes"),
    ("--example lora_checkpoint", "builds another crate's example with cargo"),
    ("--model bert_base_4heads", "BERT-base shape: too slow for a test"),
    ("--model gpt2_small_lm", "GPT-2 small shape: too slow for a test"),
    ("cargo install cargo-fuzz", "needs cargo-fuzz and a nightly-flagged build"),
];

/// The ```sh blocks of the README, with the line each starts on.
fn sh_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        let t = line.trim_start();
        match &mut cur {
            None if t == "```sh" => cur = Some((i + 1, String::new())),
            Some(_) if t == "```" => out.push(cur.take().expect("in a block")),
            Some((_, body)) => {
                body.push_str(t);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn readme_sh_blocks_run_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 10, "found {} sh blocks", blocks.len());
    for (needle, _) in SKIPPED {
        assert!(
            blocks.iter().any(|(_, b)| b.contains(needle)),
            "SKIPPED lists `{needle}`, which no README block contains any more"
        );
    }
    let scratch = tmp("readme");
    let veil = env!("CARGO_BIN_EXE_veil");
    let mut ran = 0;
    for (line, body) in &blocks {
        if let Some((_, why)) = SKIPPED.iter().find(|(n, _)| body.contains(n)) {
            eprintln!("README.md:{line}: skipped ({why})");
            continue;
        }
        let script =
            body.replace("cargo run --release -- ", "\"$VEIL\" ").replace("target/", "$T/");
        assert!(
            !script.lines().any(|l| l.trim_start().starts_with("cargo ") || l.contains(" cargo ")),
            "README.md:{line}: a block that calls cargo; run it through `cargo run --release --` or list it in SKIPPED:\n{body}"
        );
        let t0 = Instant::now();
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(root())
            .env("VEIL", veil)
            .env("T", &scratch)
            .env("XDG_CACHE_HOME", scratch.join("cache"))
            .output()
            .expect("bash runs");
        eprintln!("README.md:{line}: ran in {:.1} s", t0.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "README.md:{line}: the block failed:\n{body}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} README blocks ran");
}
