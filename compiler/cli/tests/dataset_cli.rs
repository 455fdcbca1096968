//! `veil eval --dataset` and `veil run --dataset` on the bundled labelled fixture: the report's
//! agreement, accuracy and cosine are checked against what they must be, computed here from
//! the per-sample outputs the commands wrote and the labels file; a bad dataset is refused
//! with the sample and file named, and nothing is written.

mod common;

use common::{fails_with, ok, root, tmp, veil};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const MODEL: &str = "tests/fixtures/models/tiny-classifier/model.veil";
const WEIGHTS: &str = "tests/fixtures/models/tiny-classifier/weights.safetensors";
const DATASET: &str = "tests/fixtures/datasets/tiny-classifier";

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The fixture compiled once.
fn program() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = tmp("dataset-compiled").join("tc.vbc");
        ok(&veil(&[
            "compile",
            MODEL,
            "--model",
            "tiny_classifier",
            "--weights",
            WEIGHTS,
            "-o",
            &s(&p),
        ]));
        p
    })
}

/// labels.txt read independently of the CLI.
fn labels() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(root().join(DATASET).join("labels.txt")).unwrap();
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, c) = l.split_once(' ').unwrap();
            (n.to_string(), c.trim().parse().unwrap())
        })
        .collect()
}

fn logits(dir: &Path, sample: &str) -> Vec<f64> {
    veil_compiler::npy::read(&dir.join(sample).join("logits.npy")).unwrap().to_f64_vec()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |m, i| if v[i] > v[m] { i } else { m })
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn count(v: &serde_json::Value) -> (u64, u64) {
    (v["count"].as_u64().unwrap(), v["of"].as_u64().unwrap())
}

/// The plaintext outputs of every sample, written by `veil eval --dataset` once.
fn plaintext() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let d = tmp("dataset-eval");
        let out = d.join("out");
        let json = d.join("eval.json");
        let so = ok(&veil(&[
            "eval",
            MODEL,
            "--model",
            "tiny_classifier",
            "--weights",
            WEIGHTS,
            "--dataset",
            DATASET,
            "--output",
            &s(&out),
            "--report-json",
            &s(&json),
        ]));
        assert!(so.contains("accuracy against the labels (plaintext)"), "{so}");
        out
    })
}

#[test]
fn eval_dataset_accuracy_is_what_the_written_outputs_give() {
    let out = plaintext();
    let j = report(&out.parent().unwrap().join("eval.json"));
    let labels = labels();
    assert_eq!(labels.len(), 12);
    let right = labels.iter().filter(|(n, &c)| argmax(&logits(out, n)) == c).count() as u64;
    assert_eq!(count(&j["summary"]["accuracy_plaintext"]), (right, 12));
    assert_eq!(j["task"], "classify");
    assert_eq!(j["samples"], 12);
    // The labels are the classes the samples were drawn from, not the model's predictions:
    // the trained head gets most of them, which is what makes the fixture a task.
    assert!(right >= 9, "plaintext accuracy {right}/12");
    for r in j["per_sample"].as_array().unwrap() {
        let n = r["name"].as_str().unwrap();
        assert_eq!(r["plaintext"].as_u64().unwrap() as usize, argmax(&logits(out, n)));
        assert_eq!(r["label"].as_u64().unwrap() as usize, labels[n]);
    }
}

#[test]
fn run_dataset_agreement_and_accuracy_are_what_the_written_outputs_give() {
    let d = tmp("dataset-run");
    let (out, json) = (d.join("out"), d.join("run.json"));
    let so = ok(&veil(&[
        "run",
        &s(program()),
        "--dataset",
        DATASET,
        "--output",
        &s(&out),
        "--report-json",
        &s(&json),
    ]));
    assert!(so.contains("agreement (two-party prediction = plaintext prediction): "), "{so}");
    assert!(so.contains("one session (one dealer, server and setup)"), "{so}");
    let j = report(&json);
    let plain = plaintext();
    let labels = labels();
    let (mut agree, mut right_mpc, mut right_plain, mut max_err) = (0, 0, 0, 0f64);
    for (n, &c) in &labels {
        let (m, p) = (logits(&out, n), logits(plain, n));
        agree += (argmax(&m) == argmax(&p)) as u64;
        right_mpc += (argmax(&m) == c) as u64;
        right_plain += (argmax(&p) == c) as u64;
        max_err = m.iter().zip(&p).fold(max_err, |e, (a, b)| e.max((a - b).abs()));
    }
    let sum = &j["summary"];
    assert_eq!(count(&sum["agreement"]), (agree, 12));
    assert_eq!(count(&sum["accuracy_two_party"]), (right_mpc, 12));
    assert_eq!(count(&sum["accuracy_plaintext"]), (right_plain, 12));
    let reported = sum["max_abs_error"].as_f64().unwrap();
    assert!((reported - max_err).abs() <= 1e-6 * max_err.max(1e-3), "{reported} vs {max_err}");
    assert!(max_err < 0.05, "two-party logits within 0.05 of plaintext: {max_err}");
    // The smallest gap between a sample's two largest plaintext logits is 0.295, about 25
    // times the two-party error, so every prediction must agree.
    assert_eq!(agree, 12, "the fixture's margins are wide enough for every prediction to agree");
    assert_eq!(j["run"]["session"], "one session, processes over TCP");
}

#[test]
fn run_dataset_embed_cosine_is_what_the_written_outputs_give() {
    let d = tmp("dataset-embed");
    let (out, json) = (d.join("out"), d.join("embed.json"));
    let so = ok(&veil(&[
        "run",
        &s(program()),
        "--in-process",
        "--dataset",
        DATASET,
        "--task",
        "embed",
        "--output",
        &s(&out),
        "--report-json",
        &s(&json),
    ]));
    assert!(so.contains("cosine similarity to the plaintext output: mean"), "{so}");
    let j = report(&json);
    let plain = plaintext();
    let cos: Vec<f64> = labels()
        .keys()
        .map(|n| {
            let (m, p) = (logits(&out, n), logits(plain, n));
            let dot: f64 = m.iter().zip(&p).map(|(a, b)| a * b).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            dot / (norm(&m) * norm(&p))
        })
        .collect();
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((j["summary"]["cosine_mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!((j["summary"]["cosine_min"].as_f64().unwrap() - min).abs() < 1e-9);
    assert!(min > 0.999, "{min}");
    // With --task embed there is no argmax: accuracy and agreement are absent, not zero.
    assert!(j["summary"]["agreement"].is_null() && j["summary"]["accuracy_two_party"].is_null());
}

/// A copy of the fixture dataset to break.
fn broken(name: &str, change: impl FnOnce(&Path)) -> PathBuf {
    let d = tmp(&format!("dataset-bad-{name}"));
    let ds = d.join("data");
    let _ = std::fs::remove_dir_all(&ds);
    std::fs::create_dir_all(&ds).unwrap();
    let src = root().join(DATASET);
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            std::fs::create_dir_all(ds.join(e.file_name())).unwrap();
            std::fs::copy(e.path().join("x.npy"), ds.join(e.file_name()).join("x.npy")).unwrap();
        } else {
            std::fs::copy(e.path(), ds.join(e.file_name())).unwrap();
        }
    }
    change(&ds);
    ds
}

/// `eval` and `run` on a broken dataset both fail with `msgs` and write nothing.
fn refused(ds: &Path, msgs: &[&str]) {
    let d = ds.parent().unwrap();
    let (out, json) = (d.join("out"), d.join("r.json"));
    let eval = [
        "eval",
        MODEL,
        "--model",
        "tiny_classifier",
        "--weights",
        WEIGHTS,
        "--dataset",
        &s(ds),
        "--output",
        &s(&out),
        "--report-json",
        &s(&json),
    ];
    let prog = s(program());
    let run = ["run", &prog, "--dataset", &s(ds), "--output", &s(&out), "--report-json", &s(&json)];
    for o in [veil(&eval), veil(&run)] {
        for m in msgs {
            fails_with(&o, m);
        }
        assert!(!out.exists(), "outputs written for a refused dataset");
        assert!(!json.exists(), "a report written for a refused dataset");
    }
}

#[test]
fn a_missing_input_names_the_sample_and_the_file() {
    let ds = broken("missing", |d| std::fs::remove_file(d.join("s03/x.npy")).unwrap());
    refused(&ds, &["sample `s03`", "no file for input `x`", "s03/x.npy"]);
}

#[test]
fn a_sample_of_the_wrong_length_names_the_sample_and_the_file() {
    let ds = broken("length", |d| {
        let t = veil_compiler::ir::Tensor::f32([4, 16], vec![0.5; 64]);
        veil_compiler::npy::write(&d.join("s05/x.npy"), &t).unwrap();
    });
    refused(&ds, &["sample `s05`", "s05/x.npy", "the model needs f32[8,16]"]);
}

#[test]
fn bad_label_files_name_the_line_and_the_expected_format() {
    let expected = "one `<sample name> <class id>` per line";
    let ds = broken("label-word", |d| {
        std::fs::write(d.join("labels.txt"), "s00 2\ns01 two\n").unwrap();
    });
    refused(&ds, &["labels.txt line 2", "`two` is not a class id", expected]);
    let ds = broken("label-missing", |d| {
        let text = std::fs::read_to_string(d.join("labels.txt")).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("s07")).collect();
        std::fs::write(d.join("labels.txt"), kept.join("\n")).unwrap();
    });
    refused(&ds, &["no label for sample `s07`"]);
    let ds = broken("label-range", |d| {
        let text = std::fs::read_to_string(d.join("labels.txt")).unwrap();
        std::fs::write(d.join("labels.txt"), text.replace("s04 1", "s04 9")).unwrap();
    });
    refused(&ds, &["sample `s04` has class 9", "has 4 classes (0–3)"]);
    let ds = broken("label-unknown", |d| {
        let text = std::fs::read_to_string(d.join("labels.txt")).unwrap();
        std::fs::write(d.join("labels.txt"), text + "s99 1\n").unwrap();
    });
    refused(&ds, &["no sample `s99`"]);
    let ds = broken("label-json", |d| {
        std::fs::rename(d.join("labels.txt"), d.join("labels.json")).unwrap();
    });
    refused(&ds, &["labels.json: veil reads labels from", "labels.txt only", expected]);
}
