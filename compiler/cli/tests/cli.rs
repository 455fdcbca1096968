//! The `veil` binary: help, success paths, and every bad input ending in a clear message and
//! exit code 1 (never a panic).

mod common;

use common::{fails_with, ok, root, tmp, veil, BERT, DATA};
use std::process::Output;
use veil_compiler::ir::Tensor;

fn inputs() -> Vec<String> {
    common::bert_assignments()
}

fn eval_with(inputs: &[String]) -> Output {
    let mut args = vec!["eval", BERT];
    for i in inputs {
        args.push("--input");
        args.push(i);
    }
    veil(&args)
}

#[test]
fn help_lists_the_commands() {
    let out = veil(&["--help"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for c in [
        "demo",
        "compile",
        "cost",
        "run",
        "serve",
        "dealer",
        "connect",
        "inspect",
        "eval",
        "export-weights",
    ] {
        assert!(s.contains(c), "{s}");
    }
}

#[test]
fn eval_writes_outputs() {
    let dir = tmp("eval");
    let mut args = vec![
        "eval".to_string(),
        BERT.to_string(),
        "--output".to_string(),
        dir.display().to_string(),
    ];
    for i in inputs() {
        args.push("--input".into());
        args.push(i);
    }
    let out = veil(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = veil_compiler::npy::read(&dir.join("last_hidden_state.npy")).unwrap();
    let want = veil_compiler::npy::read(&root().join(DATA).join("output_0.npy")).unwrap();
    let err =
        got.to_f64_vec().iter().zip(want.to_f64_vec()).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-4, "{err}");
}

#[test]
fn an_input_of_the_wrong_shape() {
    let dir = tmp("shape");
    let f = dir.join("ids.npy");
    veil_compiler::npy::write(&f, &Tensor::i64(vec![1, 64], vec![1; 64])).unwrap();
    let mut i = inputs();
    i[0] = format!("input_ids={}", f.display());
    let out = eval_with(&i);
    fails_with(&out, "holds i64[1,64], the model needs i64[1,128]");
    fails_with(&out, "axis 1 is 64 here, 128 in the model; for inputs of another length give --seq 64 (to eval, calibrate and compile");
    // A shape off in more than one way gets the plain message.
    veil_compiler::npy::write(&f, &Tensor::i64(vec![2, 64], vec![1; 128])).unwrap();
    let out = eval_with(&i);
    fails_with(&out, "holds i64[2,64], the model needs i64[1,128]");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("--seq"));
}

#[test]
fn an_input_of_the_wrong_dtype() {
    let dir = tmp("dtype");
    let f = dir.join("ids.npy");
    veil_compiler::npy::write(&f, &Tensor::f32(vec![1, 128], vec![1.0; 128])).unwrap();
    let mut i = inputs();
    i[0] = format!("input_ids={}", f.display());
    fails_with(&eval_with(&i), "holds f32[1,128], the model needs i64[1,128]");
}

#[test]
fn a_missing_input() {
    let i = inputs();
    fails_with(&eval_with(&i[..2]), "missing input: token_type_ids (i64[1,128])");
}

#[test]
fn an_unknown_input_and_a_missing_file() {
    let mut i = inputs();
    i.push("nope=x.npy".into());
    fails_with(&eval_with(&i), "the model has no input `nope`");
    let mut i = inputs();
    i[1] = "attention_mask=does/not/exist.npy".into();
    fails_with(&eval_with(&i), "does/not/exist.npy");
}

#[test]
fn a_corrupt_model_file() {
    let dir = tmp("corrupt");
    let bytes = std::fs::read(root().join(BERT)).unwrap();
    let f = dir.join("cut.onnx");
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    fails_with(&veil(&["inspect", f.to_str().unwrap()]), "is not a valid ONNX model");
    fails_with(&veil(&["inspect", "no/such/model.onnx"]), "cannot read no/such/model.onnx");
}

#[test]
fn an_unbound_dimension() {
    const DYN: &str =
        "tests/fixtures/models/bert-tiny-random/model.torchscript_opset17_dynamic.onnx";
    // Compiling needs every dimension bound, and says how.
    let d = tmp("unbound");
    let o = d.join("m.vbc");
    fails_with(&veil(&["compile", DYN, "-o", o.to_str().unwrap()]), "bind it with --seq N");
    assert!(!o.exists(), "nothing written");
    // Inspecting shows the declared interface with the dimensions unbound, and the flags.
    let shown = ok(&veil(&["inspect", DYN]));
    assert!(shown.contains("input input_ids: i64[batch, sequence]"), "{shown}");
    assert!(shown.contains("output last_hidden_state: f32[batch, sequence, 128]"), "{shown}");
    assert!(shown.contains("symbolic dimensions unbound: batch, sequence"), "{shown}");
    assert!(shown.contains("needs them bound: --seq N;"), "{shown}");
    assert!(shown.contains(" nodes: ") && shown.contains("MatMul "), "{shown}");
    // Bound, the IR dump.
    let dump = ok(&veil(&["inspect", DYN, "--seq", "128"]));
    assert!(dump.contains("%input_ids: i64[1,128]"), "{dump}");
    // Several sequence dimensions (a decoder with past): each gets its own --dim, and those
    // flags, as printed, bind them.
    const PAST: &str = "tests/fixtures/models/gpt2-with-past/decoder_with_past_model.onnx";
    let shown = ok(&veil(&["inspect", PAST]));
    let hint = "--dim sequence_length=N --dim past_sequence_length=N \
                --dim 'past_sequence_length + 1=N'";
    assert!(shown.contains(hint), "{shown}");
    let dims = ["sequence_length=1", "past_sequence_length=5", "past_sequence_length + 1=6"];
    let mut args = vec!["inspect", PAST];
    for d in &dims {
        args.extend(["--dim", d]);
    }
    let dump = ok(&veil(&args));
    assert!(dump.contains("%past_key_values.0.key: f32[1,2,5,32]"), "{dump}");
}

#[test]
fn export_weights_round_trips_through_safetensors() {
    let dir = tmp("export");
    let f = dir.join("w.safetensors");
    let out = veil(&["export-weights", BERT, "-o", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let src = veil_compiler::weights::SafetensorsSource::open(&f).unwrap();
    assert_eq!(src.names().len(), 37);
    // The exporter's `val_49` is named after the bias it is added to.
    let q = src.tensor("m.encoder.layer.0.attention.self.query.weight").unwrap();
    assert_eq!(q.shape, vec![128, 128]);
    assert!(src.names().iter().all(|n| !n.starts_with("val_")), "{:?}", src.names());
    // ...so the DSL example loads them by module path and runs.
    let ex = root().join("examples/models/bert-tiny.veil");
    let out = veil(&[
        "inspect".to_string(),
        ex.display().to_string(),
        "--weights".into(),
        f.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn stdlib_table_command() {
    let out = ok(&veil(&["stdlib", "--function", "exp_neg"]));
    assert!(out.contains("| `exp_neg` (exp) |"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("| `")).count(), 1);
    fails_with(&veil(&["stdlib", "--function", "nope"]), "no stdlib function `nope`");
    fails_with(&veil(&["stdlib", "--frac-bits", "40"]), "out of range");
}

#[test]
fn compile_with_public_weights() {
    let dir = tmp("public");
    let out = dir.join("bt.vbc");
    let o =
        ok(&veil(&["compile", BERT, "--public", "m.embeddings.*", "-o", out.to_str().unwrap()]));
    assert!(o.contains("public weights: 5 tensors"), "{o}");
    assert!(o.contains("against every weight private: online"), "{o}");
    let bad = dir.join("bad.vbc");
    fails_with(
        &veil(&["compile", BERT, "--public", "m.embedding.*", "-o", bad.to_str().unwrap()]),
        "matches no weight",
    );
    assert!(!bad.exists(), "nothing written for a refused compile");
    // A typo deep in a name is answered with the names closest to it, not the first ones.
    let out = veil(&[
        "compile",
        BERT,
        "--public",
        "m.encoder.layer.1.atention.*",
        "-o",
        bad.to_str().unwrap(),
    ]);
    fails_with(&out, "the closest names: m.encoder.layer.1.");
}

#[test]
fn compile_splits_a_merged_low_rank_update() {
    let dir = tmp("lora");
    let base = dir.join("base.safetensors");
    ok(&veil(&["export-weights", BERT, "-o", base.to_str().unwrap()]));
    // The fine-tuned checkpoint: layer 1's query matrix plus a rank-2 update (merged LoRA).
    let src = veil_compiler::weights::SafetensorsSource::open(&base).unwrap();
    let mut tuned = Vec::new();
    for n in src.names() {
        let mut t = src.tensor(&n).unwrap();
        if n == "m.encoder.layer.1.attention.self.query.weight" {
            let w = t.as_f32().unwrap();
            let v = (0..w.len())
                .map(|ij| {
                    let (i, j) = ((ij / 128) as f32, (ij % 128) as f32);
                    w[ij] + 0.01 * (i / 128.0) * (1.0 - j / 64.0) + 0.02 * (j / 128.0).sin()
                })
                .collect();
            t = Tensor::f32(t.shape.clone(), v);
        }
        tuned.push((n, t));
    }
    let tuned_file = dir.join("tuned.safetensors");
    veil_compiler::weights::write_safetensors(&tuned_file, &tuned).unwrap();
    let ex = root().join("examples/models/bert-tiny.veil");
    let out = dir.join("lora.vbc");
    let args = |rank: &str| -> Vec<String> {
        let mut a = vec![
            "compile".to_string(),
            ex.display().to_string(),
            "--weights".into(),
            tuned_file.display().to_string(),
            "--public-weights".into(),
            base.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        if !rank.is_empty() {
            a.extend(["--lora-rank".to_string(), rank.to_string()]);
        }
        a
    };
    let o = ok(&veil(&args("8")));
    assert!(o.contains("--lora-rank 8: 1 matrices split") && o.contains("r = 2;"), "{o}");
    assert!(o.contains("1 × the base checkpoint's part of a low-rank update"), "{o}");
    // Without the split that matrix is private whole: layer 1 costs more.
    let plain = ok(&veil(&args("")));
    let online = |s: &str| -> String {
        s.lines().find(|l| l.starts_with("per inference: online")).unwrap().to_string()
    };
    assert_ne!(online(&o), online(&plain));
    fails_with(&veil(&args("0")), "at least 1");
    // A usage error (clap's exit code 2) names the missing flag.
    let usage = veil(&["compile", BERT, "--lora-rank", "8"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--public-weights"));
}

const SMU: &str = "examples/models/bert-tiny-smu.veil";

#[test]
fn calibrate_compile_smu_and_run_match_the_plaintext_model() {
    let dir = tmp("smu");
    let cal = dir.join("smu.json").display().to_string();
    let vbc = dir.join("smu.vbc").display().to_string();
    let base = ["--random-weights", "1", "--nonlinear", "smu"];
    let mut args = vec!["calibrate", SMU, "--random-inputs", "1", "--samples", "2", "-o", &cal];
    args.extend(base);
    let s = ok(&veil(&args));
    assert!(s.contains("smu1: argument in") && s.contains("layer_norm"), "{s}");
    let mut args = vec!["compile", SMU, "--calibration", &cal, "-o", &vbc];
    args.extend(base);
    let s = ok(&veil(&args));
    assert!(s.contains("comparison-free") && s.contains("stdlib smu1_fit"), "{s}");
    // Sample 0 of the calibration is seed 1; seed 7 is an input it never saw.
    let s = ok(&veil(&["run", &vbc, "--random-inputs", "7", "--in-process"]));
    let rel: f64 = s
        .split("vs plaintext reference: max abs error ")
        .nth(1)
        .and_then(|t| t.split(" (").nth(1))
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no error line in {s}"));
    assert!(rel < 1e-2, "relative error {rel}");

    // Bad inputs: each a clear message.
    let mut args = vec!["compile", SMU, "-o", &vbc];
    args.extend(base);
    fails_with(&veil(&args), "--nonlinear smu needs --calibration FILE");
    let mut args = vec!["compile", SMU, "--calibration", &cal, "-o", &vbc, "--smu-mu", "0.5"];
    args.extend(base);
    fails_with(&veil(&args), "but this is model `bert_tiny_smu` with `smu 0 0.5`");
    fails_with(
        &veil(&["compile", SMU, "--random-weights", "1", "--calibration", &cal, "-o", &vbc]),
        "--calibration is used by --nonlinear smu only",
    );
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{\"version\": 1}").unwrap();
    let junk = junk.display().to_string();
    let mut args = vec!["compile", SMU, "--calibration", &junk, "-o", &vbc];
    args.extend(base);
    fails_with(&veil(&args), "not a calibration file written by `veil calibrate`");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.display().to_string();
    let mut args = vec!["calibrate", SMU, "--inputs", &empty, "-o", &cal];
    args.extend(base);
    fails_with(&veil(&args), "no file for input `x`");
    let mut args = vec!["compile", SMU, "--calibration", &cal, "-o", &vbc, "--smu-mu=0"];
    args.extend(base);
    fails_with(&veil(&args), "--smu-mu must be a positive number");
}

#[test]
fn dump_after_a_stage_prints_its_ir_alone_on_stdout() {
    let d = tmp("dump-after");
    let out = d.join("m.vbc");
    let listed = ok(&veil(&["compile", BERT, "--dump-after", "list"]));
    for stage in ["import", "smu_rewrite", "generation", "lower_nonlinear", "fold_public"] {
        assert!(listed.contains(stage), "{stage} missing from:\n{listed}");
    }
    let o = out.to_str().unwrap();
    let before = ok(&veil(&["compile", BERT, "-o", o, "--dump-after", "divisions_to_products"]));
    let after = ok(&veil(&["compile", BERT, "-o", o, "--dump-after", "lower_nonlinear"]));
    // The dump is the IR and nothing else (the report went to stderr); the nonlinear
    // lowering replaced GELU by its approximation.
    assert!(!before.contains("wrote:") && !after.contains("wrote:"));
    assert!(before.contains("gelu"), "{before}");
    assert_ne!(before, after);
    assert!(out.exists(), "the compile went on and wrote the program");
    fails_with(
        &veil(&["compile", BERT, "-o", o, "--dump-after", "lowering"]),
        "--dump-after: no stage `lowering`",
    );
}

#[test]
fn an_unknown_stdlib_function_lists_each_name_once() {
    let out = veil(&["stdlib", "--function", "nope"]);
    fails_with(&out, "no stdlib function `nope`; the stdlib has: ");
    let err = String::from_utf8_lossy(&out.stderr);
    let list = err.split("the stdlib has: ").nth(1).unwrap().trim();
    let names: Vec<&str> = list.split(", ").collect();
    let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(names.len(), unique.len(), "{list}");
    assert!(unique.contains("rsqrt_fit"));
}

#[test]
fn inspect_shows_a_dsl_model_without_weights_and_the_names_globs_match() {
    // A DSL model's dump needs shapes only.
    let out = veil(&["inspect", "examples/models/bert-tiny.veil"]);
    let dump = ok(&out);
    assert!(
        dump.contains("%m.encoder.layer.0.attention.self.query.weight: f32[128,128]"),
        "{dump}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("drawn at random"));
    // An export's anonymous weights are listed with the names `--public` globs match.
    let dump = ok(&veil(&["inspect", BERT]));
    let section = dump.split("names --public globs match").nth(1).expect("the section");
    assert!(section.contains("→ m.encoder.layer.0."), "{section}");
}

#[test]
fn eval_binds_a_dynamic_axis_from_the_inputs_given() {
    const DYN: &str =
        "tests/fixtures/models/bert-tiny-random/model.torchscript_opset17_dynamic.onnx";
    let d = tmp("dynamic");
    // The full-length inputs: no --seq needed, and the output is onnxruntime's.
    let mut args =
        vec!["eval".to_string(), DYN.to_string(), "--output".into(), d.display().to_string()];
    for i in inputs() {
        args.push("--input".into());
        args.push(i);
    }
    let out = ok(&veil(&args));
    assert!(out.contains("[1,128,128]"), "{out}");
    // Inputs of another length (the first 64 tokens): bound to 64.
    let short = |i: usize| {
        let t =
            veil_compiler::npy::read(&root().join(DATA).join(format!("input_{i}.npy"))).unwrap();
        let v = t.to_f64_vec().iter().take(64).map(|&x| x as i64).collect();
        let f = d.join(format!("short_{i}.npy"));
        veil_compiler::npy::write(&f, &Tensor::i64(vec![1, 64], v)).unwrap();
        f
    };
    let names = ["input_ids", "attention_mask", "token_type_ids"];
    let mut args = vec!["eval".to_string(), DYN.to_string()];
    for (i, n) in names.iter().enumerate() {
        args.push("--input".into());
        args.push(format!("{n}={}", short(i).display()));
    }
    assert!(ok(&veil(&args)).contains("[1,64,128]"));
    // Inputs that disagree with each other: named.
    let mut args = vec!["eval".to_string(), DYN.to_string()];
    let full = inputs();
    args.extend(["--input".to_string(), format!("input_ids={}", short(0).display())]);
    args.extend(["--input".to_string(), full[1].clone(), "--input".to_string(), full[2].clone()]);
    fails_with(&veil(&args), "the inputs disagree on the dimension");
}

/// The parts of an error line (split at `: `), longer than a word, said more than once.
fn repeated_parts(line: &str) -> Vec<String> {
    let parts: Vec<&str> = line.split(": ").map(str::trim).filter(|p| p.len() >= 12).collect();
    let mut seen = std::collections::BTreeSet::new();
    parts.into_iter().filter(|p| !seen.insert(*p)).map(String::from).collect()
}

#[test]
fn no_error_says_the_same_thing_twice() {
    let d = tmp("repeats");
    let bad = d.join("bad.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let missing = "no/such/file.npy";
    let mut ids = inputs();
    ids[0] = format!("input_ids={missing}");
    let cases: Vec<Vec<String>> = vec![
        vec!["eval".into(), "no/such/model.onnx".into()],
        vec!["compile".into(), bad.display().to_string()],
        [
            vec!["eval".to_string(), BERT.into()],
            ids.iter().flat_map(|i| ["--input".to_string(), i.clone()]).collect(),
        ]
        .concat(),
        vec![
            "compile".into(),
            "examples/models/bert-tiny.veil".into(),
            "--weights".into(),
            "no/such.safetensors".into(),
        ],
        vec!["compile".into(), BERT.into(), "--public".into(), "nothing.matches.*".into()],
        vec![
            "compile".into(),
            BERT.into(),
            "--nonlinear".into(),
            "smu".into(),
            "--calibration".into(),
            "no/such.json".into(),
        ],
        vec![
            "compile".into(),
            "examples/models/bert-tiny.veil".into(),
            "--random-weights".into(),
            "1".into(),
            "--dim".into(),
            "NOPE=3".into(),
        ],
        vec![
            "compile".into(),
            "tests/fixtures/models/bert-tiny-random/model.torchscript_opset17_dynamic.onnx".into(),
        ],
    ];
    for args in cases {
        let out = veil(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail cleanly");
        let err = String::from_utf8_lossy(&out.stderr);
        for line in err.lines().filter(|l| l.starts_with("error")) {
            assert!(
                repeated_parts(line).is_empty(),
                "{args:?} repeats {:?} in: {line}",
                repeated_parts(line)
            );
        }
    }
    // Control: the check sees the repetition this test is about.
    let old = "error: reading input `nope`: x.npy: No such file or directory (os error 2): No such file or directory (os error 2)";
    assert_eq!(repeated_parts(old), vec!["No such file or directory (os error 2)".to_string()]);
}
