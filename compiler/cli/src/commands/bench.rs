//! `veil bench`: the benchmark suite. Compiles BERT-base and GPT-2 small shapes (128 tokens,
//! seeded random weights) with and without each optimization, takes the exact bytes and
//! rounds from the cost model (the VM measures the same numbers), optionally runs each
//! program for its time and error, and writes bench.json, report.md and SVG plots. With
//! `--serve PROGRAM` it runs the load benchmark instead ([`super::load`]).

use crate::commands::compile::{compile_file_with, LoweringArgs, PublicArgs};
use crate::model::ModelArgs;
use crate::nonlinear::{Nonlinear, NonlinearArgs};
use crate::report::{bytes, Net};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `veil bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory for bench.json, report.md and the plots (the compiled programs go to
    /// DIR/programs: several GB).
    #[arg(short, long, value_name = "DIR", default_value = "target/bench")]
    pub output: PathBuf,
    /// Also run every program (three roles in this process) for its time and error: minutes.
    #[arg(long)]
    pub run: bool,
    /// Only the configurations whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    #[command(flatten)]
    pub load: crate::commands::load::LoadArgs,
}

/// One configuration: a model and the optimizations applied.
struct Config {
    family: &'static str,
    name: &'static str,
    file: &'static str,
    model: &'static str,
    public: Vec<String>,
    smu: bool,
    /// Token pruning: `--prune-keep` fractions per layer (thresholds calibrated on the input).
    prune: Option<&'static str>,
}

/// What was measured for one configuration.
#[derive(Serialize)]
struct Row {
    family: String,
    name: String,
    online_bytes: u64,
    rounds: u64,
    dealer_bytes: u64,
    setup_bytes: u64,
    lan_seconds: f64,
    wan_seconds: f64,
    by_op: BTreeMap<String, u64>,
    by_layer: BTreeMap<String, u64>,
    client_seconds: Option<f64>,
    max_rel_error: Option<f64>,
}

fn configs() -> Vec<Config> {
    let half = |prefix: &str| (0..6).map(|l| format!("{prefix}.{l}.*")).collect::<Vec<_>>();
    let c = |family, name, file, model, public, smu| Config {
        family,
        name,
        file,
        model,
        public,
        smu,
        prune: None,
    };
    // CipherPrune's BERT-base schedule (128-55-54-52-49-45-24-14-5-2-1-1) as fractions.
    let schedule = "0.43,0.98,0.963,0.942,0.918,0.533,0.583,0.357,0.4,0.5,1,1";
    let pruned = |name, public, keep, smu| Config {
        family: "BERT-base",
        name,
        file: "examples/models/bert-base.veil",
        model: "bert_base_cls",
        public,
        smu,
        prune: Some(keep),
    };
    vec![
        c("BERT-base", "all private", "examples/models/bert-base.veil", "bert_base", vec![], false),
        c(
            "BERT-base",
            "layers 0-5 public (Marill LF=0.5)",
            "examples/models/bert-base.veil",
            "bert_base",
            half("layer"),
            false,
        ),
        c(
            "BERT-base",
            "4 merged heads",
            "examples/models/bert-base.veil",
            "bert_base_4heads",
            vec![],
            false,
        ),
        c(
            "BERT-base",
            "layers 0-5 public + 4 merged heads",
            "examples/models/bert-base.veil",
            "bert_base_4heads",
            half("layer"),
            false,
        ),
        c(
            "BERT-base",
            "--nonlinear smu (changes the function)",
            "examples/models/bert-base.veil",
            "bert_base",
            vec![],
            true,
        ),
        pruned("token pruning (CipherPrune's schedule; CLS output)", vec![], schedule, false),
        pruned(
            "layers 0-5 public + token pruning after 6-9 (CLS output)",
            half("layer"),
            "1,1,1,1,1,1,0.111,0.357,0.4,0.5,1,1",
            false,
        ),
        pruned(
            "--nonlinear smu + token pruning (CipherPrune's schedule; CLS output)",
            vec![],
            schedule,
            true,
        ),
        c(
            "GPT-2 small",
            "all private",
            "examples/models/gpt2-small.veil",
            "gpt2_small",
            vec![],
            false,
        ),
        c(
            "GPT-2 small",
            "blocks 0-5 public",
            "examples/models/gpt2-small.veil",
            "gpt2_small",
            half("h"),
            false,
        ),
    ]
}

/// CrypTen 0.4.1, 12-layer BERT-base, 128 tokens, on this kind of machine (BENCHMARKS.md).
const CRYPTEN_BYTES: f64 = 9_137.6e6;
const CRYPTEN_ROUNDS: f64 = 2256.0;
const CRYPTEN_SECONDS: f64 = 44.2;

/// SIGMA's online bytes and rounds at 128 tokens, re-measured from its code (BENCHMARKS.md:
/// 0.99 GiB for BERT-base, 0.82 GiB for GPT-2 small, 1,128 rounds for both). Bytes and rounds
/// do not depend on the hardware, so these are ratios; its GPU times are not.
const SIGMA_BERT_BYTES: f64 = 0.99 * 1073741824.0;
const SIGMA_GPT2_BYTES: f64 = 0.82 * 1073741824.0;
const SIGMA_ROUNDS: f64 = 1128.0;

/// The sentence comparing a family's first row (all private) with SIGMA's bytes and rounds.
fn sigma_line(base: &Row, sigma_bytes: f64, shown: &str, key: &str) -> String {
    format!(
        "Against SIGMA (BENCHMARKS.md, its own code re-run: {shown} online, 1,128 rounds, {key} of \
         key per party): all private is {:.2}× its bytes and {:.2}× its rounds, with {} of \
         dealer material.\n",
        base.online_bytes as f64 / sigma_bytes,
        base.rounds as f64 / SIGMA_ROUNDS,
        bytes(base.dealer_bytes)
    )
}

/// `BERT-base` → `bert-base`, `--nonlinear smu (…)` → `nonlinear-smu-…`.
fn slug(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    mapped.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-")
}

fn measure(c: &Config, out: &Path, run: bool) -> Result<Row> {
    let file = Path::new(c.file);
    let margs = ModelArgs {
        model: Some(c.model.to_string()),
        random_weights: Some(1),
        ..ModelArgs::default()
    };
    let pa = PublicArgs { globs: c.public.clone(), ..PublicArgs::default() };
    let mut la = LoweringArgs::default();
    let stem = format!("{}-{}", slug(c.family), slug(c.name));
    if c.smu {
        la.nonlinear = NonlinearArgs { nonlinear: Nonlinear::Smu, smu_alpha: 0.0, smu_mu: 1.0 };
    }
    let programs = out.join("programs");
    std::fs::create_dir_all(&programs)
        .with_context(|| format!("creating {}", programs.display()))?;
    // Pruned: thresholds calibrated on the benchmark's own input, and the cost at the lengths
    // the plaintext pruned run reaches (the two-party run reaches the same).
    let mut margs = margs;
    let mut lengths = Vec::new();
    if let Some(keep) = c.prune {
        margs.seq = Some(128);
        let thr = programs.join(format!("{stem}.thresholds.json"));
        lengths = prune_thresholds(file, &margs, &la.nonlinear, keep, &thr)?;
        la.prune = Some(thr);
    }
    // SMU's ranges on the same input (over the pruned run when pruned).
    if c.smu {
        use crate::commands::calibrate as cal;
        let path = programs.join(format!("{stem}.calibration.json"));
        let na = &la.nonlinear;
        match &la.prune {
            Some(thr) => {
                let one = |g: &veil_compiler::ir::Graph| cal::random_samples(g, 1, 1);
                cal::calibrate_pruned_file(file, &margs, na, thr, one, &path)?
            }
            None => cal::calibrate_random(file, &margs, na, 1, 1, &path)?,
        };
        la.calibration = Some(path);
    }
    let vbc = programs.join(format!("{stem}.vbc"));
    let (compiled, paths, _) = compile_file_with(file, &margs, &pa, &la, 16, &vbc)
        .with_context(|| format!("{} / {}", c.family, c.name))?;
    let pc =
        veil_isa::cost::program_cost_at(&compiled.program, &lengths).map_err(anyhow::Error::msg)?;
    let mut by_op: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_layer: BTreeMap<String, u64> = BTreeMap::new();
    for (tag, cost) in &pc.by_tag {
        *by_op.entry(tag.op.clone()).or_default() += cost.online();
        *by_layer.entry(tag.layer.clone()).or_default() += cost.online();
    }
    let (mut client_seconds, mut max_rel_error) = (None, None);
    if run {
        let p = crate::party::program(&paths.program)?;
        let cp = crate::party::client_part(&paths.program, None, &p)?;
        let inputs = crate::commands::run::random_inputs(&cp, 1)?;
        let local = crate::commands::run::Local {
            path: &paths.program,
            program: &p,
            client: &cp,
            inputs: &inputs,
            timeout: 600,
            jit: true,
            insecure: false,
        };
        let (outs, m) = local.run(true)?;
        client_seconds = Some(m.prefix.as_secs_f64() + m.client.body_time.as_secs_f64());
        if let Some(r) = crate::outcome::reference(&p, None, &inputs)? {
            let (e, mx) = crate::outcome::max_err(&outs[0].1, &r[0]);
            max_rel_error = Some(e / mx.max(1e-30));
        }
    }
    Ok(Row {
        family: c.family.into(),
        name: c.name.into(),
        online_bytes: pc.body.online(),
        rounds: pc.body.rounds,
        dealer_bytes: pc.body.dealer,
        setup_bytes: pc.setup.online(),
        lan_seconds: Net::Lan.seconds(&pc.body),
        wan_seconds: Net::Wan.seconds(&pc.body),
        by_op,
        by_layer,
        client_seconds,
        max_rel_error,
    })
}

/// Writes thresholds keeping the fractions `keep` on input 1 (what the run feeds) and returns
/// the lengths the plaintext pruned run reaches.
fn prune_thresholds(
    file: &Path,
    margs: &ModelArgs,
    na: &NonlinearArgs,
    keep: &str,
    out: &Path,
) -> Result<Vec<u32>> {
    let keep: Vec<f64> = keep.split(',').map(|f| f.parse()).collect::<Result<_, _>>()?;
    let sample =
        |g: &veil_compiler::ir::Graph| Ok(vec![crate::model::random_reals(g, 1, "--inputs DIR")?]);
    let recipe = crate::commands::calibrate::plain_recipe(file, margs, na)?;
    let c = crate::prune::calibrate(&recipe, &keep, 1, sample)?;
    crate::commands::calibrate::write_json(out, &c.config)?;
    Ok(c.lengths[0].iter().map(|&k| k as u32).collect())
}

fn report(rows: &[Row], run: bool) -> String {
    let mut s = String::from("# veil bench\n\n");
    s.push_str(
        "Generated by `veil bench` (`cargo run --release -- bench -o DIR [--run]`): 128 tokens, \
         seeded random weights (N(0, 0.02) matrices), 16 fractional bits in Z_2^64. Bytes and \
         rounds are the compiler's cost model, which the VM's measurements equal exactly (a test \
         checks it); network times are estimates from them (LAN 1 Gbit/s 0.5 ms RTT, WAN 100 \
         Mbit/s 40 ms RTT). ",
    );
    if run {
        s.push_str("Client time: all three roles in one process on this machine (plaintext part + session).\n\n");
    } else {
        s.push_str("Run with `--run` for measured time and error.\n\n");
    }
    for family in ["BERT-base", "GPT-2 small"] {
        let fam: Vec<&Row> = rows.iter().filter(|r| r.family == family).collect();
        if fam.is_empty() {
            continue;
        }
        s.push_str(&format!("## {family}, 128 tokens\n\n"));
        s.push_str("| configuration | online | rounds | dealer | LAN est. | WAN est. |");
        s.push_str(if run { " client time | max rel. error |\n" } else { "\n" });
        s.push_str(if run {
            "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        } else {
            "|---|---:|---:|---:|---:|---:|\n"
        });
        for r in &fam {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} s | {:.1} s |",
                r.name,
                bytes(r.online_bytes),
                r.rounds,
                bytes(r.dealer_bytes),
                r.lan_seconds,
                r.wan_seconds
            ));
            if run {
                s.push_str(&format!(
                    " {} | {} |",
                    r.client_seconds.map(|t| format!("{t:.1} s")).unwrap_or_default(),
                    r.max_rel_error.map(|e| format!("{e:.1e}")).unwrap_or_default()
                ));
            }
            s.push('\n');
        }
        if family == "BERT-base" {
            let base = fam[0];
            s.push_str(&format!(
                "\nAgainst CrypTen 0.4.1 on this kind of machine (BENCHMARKS.md: 9,137.6 MB, 2,256 rounds, 44.2 s): all private is {:.1}× fewer bytes and {:.1}× fewer rounds{}.\n",
                CRYPTEN_BYTES / base.online_bytes as f64,
                CRYPTEN_ROUNDS / base.rounds as f64,
                base.client_seconds.map(|t| format!(", {:.1}× less time", CRYPTEN_SECONDS / t)).unwrap_or_default()
            ));
            s.push_str(&sigma_line(base, SIGMA_BERT_BYTES, "1.06 GB", "16.8 GiB"));
            if fam.iter().any(|r| r.name.contains("pruning")) {
                s.push_str(
                    "Token-pruning rows: `bert_base_cls` (the CLS row as output), thresholds from \
                     `veil calibrate --prune-keep` on the benchmark's input, bytes and rounds at \
                     the token counts its pruned run reaches (512-token figures and per-layer \
                     tables: pruning.md).\n",
                );
            }
        }
        if family.starts_with("GPT-2") {
            s.push_str(&format!(
                "\n{}",
                sigma_line(fam[0], SIGMA_GPT2_BYTES, "0.88 GB", "14.3 GiB")
            ));
        }
        let ops: Vec<String> = {
            let mut o: Vec<String> = fam.iter().flat_map(|r| r.by_op.keys().cloned()).collect();
            o.sort();
            o.dedup();
            o
        };
        s.push_str(&format!(
            "\nOnline bytes by op kind:\n\n| configuration | {} |\n|---|{}\n",
            ops.join(" | "),
            "---:|".repeat(ops.len())
        ));
        for r in &fam {
            let cells: Vec<String> = ops
                .iter()
                .map(|o| r.by_op.get(o).map(|&b| bytes(b)).unwrap_or_else(|| "0".into()))
                .collect();
            s.push_str(&format!("| {} | {} |\n", r.name, cells.join(" | ")));
        }
        s.push_str(&format!(
            "\n![{family}: online bytes by op kind]({}-by-op.svg)\n\n",
            slug(family)
        ));
        s.push_str(&format!(
            "![{family}: online bytes by layer]({}-by-layer.svg)\n\n",
            slug(family)
        ));
    }
    s.push_str(
        "## Published figures (other hardware and settings; for orientation, not ratios)\n\n\
         | system | setting | BERT-base, 128 tokens |\n|---|---|---|\n\
         | CrypTen 0.4.1 | measured here: 2 cores, loopback, online phase only | 44.2 s, 9.1 GB, 2,256 rounds |\n\
         | CipherPrune | no dealer, 3 Gbit/s LAN | 79.1 s, 9.7 GB |\n\
         | BOLT | no dealer, LAN | 245.4 s, 25.7 GB |\n\
         | Iron | no dealer, LAN | 1,087.8 s, 281 GB |\n\
         | SIGMA | dealer, GPU, function secret sharing | GPT-2 in 1.6 s |\n\
         | Comet | vs its baselines | up to 3.9× less communication, 3.5× less time |\n",
    );
    s
}

fn plots(rows: &[Row], dir: &Path) -> Result<()> {
    for family in ["BERT-base", "GPT-2 small"] {
        let fam: Vec<&Row> = rows.iter().filter(|r| r.family == family).collect();
        if fam.is_empty() {
            continue;
        }
        let mut ops: Vec<String> = fam.iter().flat_map(|r| r.by_op.keys().cloned()).collect();
        ops.sort();
        ops.dedup();
        let bars: Vec<(String, Vec<f64>)> = fam
            .iter()
            .map(|r| {
                (r.name.clone(), ops.iter().map(|o| *r.by_op.get(o).unwrap_or(&0) as f64).collect())
            })
            .collect();
        let svg = crate::svg::stacked_bars(
            &format!("{family}, 128 tokens: online bytes per inference by op kind"),
            &ops,
            &bars,
            1e6,
            "MB",
        );
        std::fs::write(dir.join(format!("{}-by-op.svg", slug(family))), svg)?;
        // Layers in model order: `model` (embeddings, outputs) first, then layer0, layer1, ...
        let mut layers: Vec<String> = fam.iter().flat_map(|r| r.by_layer.keys().cloned()).collect();
        layers.sort_by_key(|l| {
            (l != "model", l.trim_start_matches("layer").parse::<u32>().unwrap_or(0), l.clone())
        });
        layers.dedup();
        let bars: Vec<(String, Vec<f64>)> = fam
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    layers.iter().map(|l| *r.by_layer.get(l).unwrap_or(&0) as f64).collect(),
                )
            })
            .collect();
        let svg = crate::svg::stacked_bars(
            &format!("{family}, 128 tokens: online bytes per inference by layer"),
            &layers,
            &bars,
            1e6,
            "MB",
        );
        std::fs::write(dir.join(format!("{}-by-layer.svg", slug(family))), svg)?;
    }
    Ok(())
}

/// Runs the suite and writes the files.
pub fn run(a: Args) -> Result<()> {
    if let Some(p) = &a.load.serve {
        return crate::commands::load::run(p, &a.load, &a.output);
    }
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let chosen: Vec<Config> = configs()
        .into_iter()
        .filter(|c| {
            a.only.as_deref().is_none_or(|t| format!("{} {}", c.family, c.name).contains(t))
        })
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("--only matches no configuration");
    }
    let mut rows = Vec::new();
    for (i, c) in chosen.iter().enumerate() {
        eprintln!("[{}/{}] {} / {}", i + 1, chosen.len(), c.family, c.name);
        let r = measure(c, &a.output, a.run)?;
        eprintln!("  online {}, {} rounds", bytes(r.online_bytes), r.rounds);
        rows.push(r);
    }
    std::fs::write(a.output.join("bench.json"), serde_json::to_string_pretty(&rows)?)?;
    std::fs::write(a.output.join("report.md"), report(&rows, a.run))?;
    plots(&rows, &a.output)?;
    println!("wrote {}/{{bench.json, report.md, *-by-op.svg, *-by-layer.svg}}", a.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("BERT-base"), "bert-base");
        assert_eq!(
            slug("--nonlinear smu (changes the function)"),
            "nonlinear-smu-changes-the-function"
        );
    }

    #[test]
    fn the_report_has_a_row_per_configuration_and_the_published_figures() {
        let row = |name: &str, b: u64| Row {
            family: "BERT-base".into(),
            name: name.into(),
            online_bytes: b,
            rounds: 10,
            dealer_bytes: 2 * b,
            setup_bytes: 0,
            lan_seconds: 1.0,
            wan_seconds: 2.0,
            by_op: [("gelu".to_string(), b / 2), ("softmax".to_string(), b / 2)].into(),
            by_layer: [("layer0".to_string(), b)].into(),
            client_seconds: Some(2.0),
            max_rel_error: Some(1e-3),
        };
        let r = report(&[row("all private", 1_000_000_000), row("frozen", 500_000_000)], true);
        assert!(r.contains("| all private | 1.00 GB | 10 |"), "{r}");
        assert!(r.contains("| frozen | 500.0 MB |"), "{r}");
        assert!(r.contains("9.1× fewer bytes"), "{r}");
        assert!(r.contains("CipherPrune") && r.contains("SIGMA"), "{r}");
        assert!(r.contains("bert-base-by-op.svg"));
    }
}
