//! `veil calibrate --prune-keep`, `veil compile --prune` and `veil run` on the pruned program:
//! the two-party run keeps the plaintext run's token counts, reports per layer, draws the
//! chart; every bad input ends in a clear message.

mod common;

use common::{fails_with, ok, tmp, veil};
use std::path::{Path, PathBuf};
use veil_compiler::ir::Tensor;

const CLS: &str = "examples/models/bert-tiny-cls.veil";
const N: usize = 16;

/// Writes a sample of BERT's three id inputs (N tokens) into `dir`.
fn sample(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut r = veil_compiler::weights::SplitMix(seed);
    let ids: Vec<i64> = (0..N).map(|_| (r.next_u64() % 1024) as i64).collect();
    let write = |name: &str, v: Vec<i64>| {
        veil_compiler::npy::write(&dir.join(format!("{name}.npy")), &Tensor::i64([1, N], v))
            .unwrap()
    };
    write("input_ids", ids);
    write("attention_mask", vec![1; N]);
    write("token_type_ids", vec![0; N]);
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `veil CMD` on the example at 16 tokens with its seeded weights, then `extra`.
fn cls(cmd: &str, extra: &[&str]) -> std::process::Output {
    let mut a = vec![cmd, CLS, "--random-weights", "3", "--seq", "16"];
    a.extend_from_slice(extra);
    veil(&a)
}

/// Calibrated thresholds for the example (keep half after each layer) and their samples.
fn thresholds(dir: &Path) -> (PathBuf, PathBuf) {
    thresholds_with(dir, &[])
}

/// [`thresholds`] for the example compiled with `extra` flags.
fn thresholds_with(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let samples = dir.join("samples");
    sample(&samples.join("a"), 1);
    sample(&samples.join("b"), 2);
    let thr = dir.join("thr.json");
    let (sm, t) = (s(&samples), s(&thr));
    let mut a = vec!["--inputs", &sm, "--prune-keep", "0.5", "-o", &t];
    a.extend_from_slice(extra);
    let out = cls("calibrate", &a);
    let so = ok(&out);
    assert!(so.contains("sample 0: tokens 16 → "), "{so}");
    // Each point's margin from the calibration scores is reported.
    assert!(so.contains("point after layer ") && so.contains("of itself away"), "{so}");
    (thr, samples)
}

#[test]
fn pruned_two_party_run_keeps_the_plaintext_counts() {
    let dir = tmp("prune-run");
    let (thr, samples) = thresholds(&dir);
    let prog = dir.join("p.vbc");
    let out = cls("compile", &["--prune", &s(&thr), "-o", &s(&prog)]);
    let so = ok(&out);
    assert!(so.contains("prune"), "{so}");
    run_matches_the_plaintext_counts(&dir, &prog, &samples);
}

#[test]
fn pruned_smu_two_party_run_keeps_the_plaintext_counts() {
    // The SMU-rewritten attention (y · 1/Σy) is a pruning point as a softmax is; its ranges
    // are calibrated over the pruned plaintext run, whose rows sum fewer terms.
    let dir = tmp("prune-smu");
    let smu = ["--nonlinear", "smu"];
    let (thr, samples) = thresholds_with(&dir, &smu);
    let cal = dir.join("cal.json");
    let (t, c) = (s(&thr), s(&cal));
    let out = cls(
        "calibrate",
        &["--nonlinear", "smu", "--inputs", &s(&samples), "--prune", &t, "-o", &c],
    );
    let so = ok(&out);
    assert!(so.contains("over the plaintext pruned run"), "{so}");
    let prog = dir.join("p.vbc");
    let compile = |cal: &str| {
        cls(
            "compile",
            &["--nonlinear", "smu", "--calibration", cal, "--prune", &t, "-o", &s(&prog)],
        )
    };
    ok(&compile(&c));
    run_matches_the_plaintext_counts(&dir, &prog, &samples);
    // Ranges from the full-length run need not cover a pruned row's sum: refused by name.
    let full = dir.join("full.json");
    let out = cls("calibrate", &["--nonlinear", "smu", "--inputs", &s(&samples), "-o", &s(&full)]);
    ok(&out);
    std::fs::remove_file(&prog).unwrap();
    fails_with(&compile(&s(&full)), "calibrated without pruning, which does not match");
    assert!(!prog.exists(), "nothing written");
}

/// Runs `prog` two-party on sample `a`: the token counts equal the plaintext pruned run's and
/// the output is within 5e-2 of it.
fn run_matches_the_plaintext_counts(dir: &Path, prog: &Path, samples: &Path) {
    let a = samples.join("a");
    let inputs: Vec<String> = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .flat_map(|n| ["--input".to_string(), format!("{n}={}", s(&a.join(format!("{n}.npy"))))])
        .collect();
    let svg = dir.join("layers.svg");
    let mut args =
        vec!["run".to_string(), s(prog), "--in-process".into(), "--plot".into(), s(&svg)];
    args.extend(inputs);
    let so = ok(&veil(&args));
    let plain = so.lines().find(|l| l.starts_with("plaintext pruned run: tokens")).expect(&so);
    let measured = so.lines().find(|l| l.trim_start().starts_with("pruned: tokens")).expect(&so);
    let counts =
        |l: &str| l.split("tokens ").nth(1).unwrap().split(" (").next().unwrap().to_string();
    assert_eq!(counts(plain), counts(measured), "{so}");
    // The same counts: no warning that the runs pruned different tokens.
    assert!(!so.contains("warning: the two-party run kept"), "{so}");
    assert!(counts(plain).starts_with("16 → "), "{so}");
    assert!(so.contains("token pruning, per layer"), "{so}");
    assert!(so.contains("fewer bytes"), "{so}");
    // The profile per phase: each layer's measured time, and the pruning protocol's two
    // phases (the length switches are on their own line).
    let layer0 = so.lines().find(|l| l.trim_start().starts_with("layer0 ")).expect(&so);
    assert!(layer0.trim_end().ends_with("ms"), "{so}");
    let phases = so.lines().find(|l| l.contains("pruning protocol, every point")).expect(&so);
    assert!(phases.contains("keep decisions") && phases.contains("compaction"), "{so}");
    assert!(so.contains("`setlen`s took the client"), "{so}");
    let err: f64 = so
        .lines()
        .find_map(|l| l.split("max abs error ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|x| x.parse().ok())
        .expect(&so);
    assert!(err < 0.05, "{so}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

#[test]
fn bad_pruning_inputs_end_in_clear_messages() {
    let dir = tmp("prune-bad");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let x = s(&dir.join("x.vbc"));
    let compile = |extra: &[&str]| {
        let mut a = extra.to_vec();
        a.extend_from_slice(&["-o", &x]);
        cls("compile", &a)
    };
    fails_with(&compile(&["--prune", "/nonexistent/thr.json"]), "reading /nonexistent/thr.json");
    let bad = write("bad.json", "{\"theta\": 3}");
    fails_with(&compile(&["--prune", &bad]), "expected {\"theta\"");
    let big = write("big.json", "{\"theta\": [2.0, null]}");
    fails_with(&compile(&["--prune", &big]), "theta[0] = 2");
    let none = write("none.json", "{\"theta\": [null, null]}");
    fails_with(&compile(&["--prune", &none]), "every entry of `theta` is null");
    let unprotected = write("p0.json", "{\"theta\": [0.05], \"protect\": 0}");
    fails_with(&compile(&["--prune", &unprotected]), "`protect` must be at least 1");
    let many = write("many.json", "{\"theta\": [0.05, 0.05, 0.05]}");
    fails_with(&compile(&["--prune", &many]), "has 2 attention softmaxes");
    let good = write("good.json", "{\"theta\": [0.05, null]}");
    // An output over tokens cannot survive pruning.
    let full = veil(&[
        "compile",
        "examples/models/bert-tiny.veil",
        "--random-weights",
        "3",
        "--seq",
        "16",
        "--prune",
        &good,
        "-o",
        &s(&dir.join("y.vbc")),
    ]);
    fails_with(&full, "output `last_hidden_state` has a token axis");
    // A fixed-length export.
    let fixed = veil(&["compile", common::BERT, "--prune", &good, "-o", &s(&dir.join("z.vbc"))]);
    fails_with(&fixed, "sequence length can be chosen");
    // The same with --seq: its shapes do not follow the length (said so, not "no attention").
    let z = s(&dir.join("z.vbc"));
    let fixed = veil(&["compile", common::BERT, "--seq", "16", "--prune", &good, "-o", &z]);
    fails_with(&fixed, "sequence length is fixed");
    fails_with(&compile(&["--dim", "SS=3"]), "the constant `SS`, which the file does not define");
    let public = compile(&[
        "--prune",
        &good,
        "--public",
        "m.embeddings.*",
        "--public",
        "m.encoder.layer.0.*",
    ]);
    fails_with(&public, "falls in layers the client runs in the clear");
    let smu = compile(&["--prune", &good, "--nonlinear", "smu"]);
    fails_with(&smu, "--nonlinear smu needs --calibration FILE");
    // `veil calibrate` of the example with `extra`, writing t.json.
    let t = s(&dir.join("t.json"));
    let calibrate = |extra: &[&str]| {
        let mut a = extra.to_vec();
        a.extend_from_slice(&["-o", &t]);
        cls("calibrate", &a)
    };
    // Random samples of a model with token ids: ids over the vocabulary, the mask all ones.
    let random = dir.join("random.json");
    ok(&cls("calibrate", &["--random-inputs", "1", "--prune-keep", "0.5", "-o", &s(&random)]));
    assert!(random.exists());
    sample(&dir.join("one"), 5);
    let one = s(&dir.join("one"));
    let keep = |f: &'static str| calibrate(&["--inputs", &one, "--prune-keep", f]);
    fails_with(&keep("1.5"), "keep fraction 1.5 outside [0, 1]");
    fails_with(&keep("1"), "there is no pruning point to write");
    // --plot needs a pruned program, and says so before running anything.
    let plain = dir.join("plain.vbc");
    ok(&cls("compile", &["-o", &s(&plain)]));
    let run = veil(&["run", &s(&plain), "--random-inputs", "1", "--plot", &s(&dir.join("x.svg"))]);
    fails_with(&run, "the program was not compiled with --prune");
    assert!(!dir.join("t.json").exists(), "nothing half-written");
}

#[test]
fn the_load_benchmark_serves_a_pruned_program() {
    // A pruned program's material is made ahead by the dealer, not pooled by the server: the
    // benchmark waits for the dealer's word that it is ready (it used to wait for a pool that
    // never fills, for an hour). Its clients draw real inputs: BERT-base's encoder, shrunk.
    let dir = tmp("prune-serve");
    let e = common::root().join("examples/models/bert-base.veil");
    let (e, thr, prog, out) =
        (s(&e), s(&dir.join("thr.json")), s(&dir.join("p.vbc")), s(&dir.join("load")));
    let model = ["--model", "bert_base_cls", "--random-weights", "1", "--seq", "16"];
    let dims = ["--dim", "L=2", "--dim", "H=128", "--dim", "NH=2", "--dim", "FF=512"];
    let cal = ["--random-inputs", "1", "--samples", "2", "--prune-keep", "0.5", "-o", &thr];
    ok(&veil(&[&["calibrate", &e][..], &model, &dims, &cal].concat()));
    ok(&veil(&[&["compile", &e][..], &model, &dims, &["--prune", &thr, "-o", &prog]].concat()));
    let args = ["bench", "--serve", &prog, "--clients", "1", "--queries", "2", "--timeout", "120"];
    let so = ok(&veil(&[&args[..], &["-o", &out]].concat()));
    assert!(so.contains("wrote "), "{so}");
    let md = std::fs::read_to_string(dir.join("load").join("load.md")).unwrap();
    assert!(md.contains("| 1 × 2 |"), "{md}");
}
