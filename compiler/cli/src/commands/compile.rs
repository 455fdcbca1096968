//! `veil compile`: a model to a two-party program, with the weights split by who may see them.

use crate::model::ModelArgs;
use crate::nonlinear::{Nonlinear, NonlinearArgs};
use crate::report::{cost_report, reveals, Net};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use veil_compiler::compile::pipeline::Observer;
use veil_compiler::compile::{artifacts, public, Compiled};
use veil_compiler::recipe::{Built, Nonlinear as Nonlinear2, PublicSpec, Recipe};

/// Arguments of `veil compile`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx or .veil).
    pub file: PathBuf,
    /// The program to write (default: the model's name with .vbc, in the current directory).
    /// Next to it go NAME.client (give it to the client) and NAME.server.safetensors (keep it
    /// at the server: it holds the private weights).
    #[arg(short, long, value_name = "FILE.vbc")]
    pub output: Option<PathBuf>,
    /// Fixed-point fractional bits.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(8..=24))]
    pub frac_bits: u8,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub public: PublicArgs,
    #[command(flatten)]
    pub lowering: LoweringArgs,
    #[command(flatten)]
    pub generate: GenerateArgs,
    /// Print the IR after this pipeline stage to stdout (the rest of the report goes to
    /// stderr) and compile on; `--dump-after list` lists the stages in order.
    #[arg(long, value_name = "STAGE")]
    pub dump_after: Option<String>,
}

/// A generation program instead of one forward pass (causal decoders).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GenerateArgs {
    /// Compile a generation program for N new tokens: the prefill of a --prompt-len prompt and
    /// N-1 one-token decode steps, the KV cache kept secret-shared between steps, each next
    /// token chosen by a secure argmax; outputs token.0 … token.{N-1}, revealed to the client
    /// only. `veil generate` compiles and runs one in a single command.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// With --generate: the prompt length in tokens (the input_ids are [1, P]).
    #[arg(long, value_name = "P", requires = "generate")]
    pub prompt_len: Option<usize>,
    /// With --generate: sample instead of greedy; the client feeds `sample_noise` [N, V]
    /// (Gumbel noise times the temperature, added to the logits before the argmax).
    #[arg(long, requires = "generate")]
    pub sample: bool,
    /// With --sample: only the K most likely tokens can be drawn (top-k filtering on shares).
    #[arg(long, value_name = "K", requires = "sample")]
    pub top_k: Option<usize>,
}

impl GenerateArgs {
    /// The generation options, when --generate is given.
    pub fn options(&self) -> Result<Option<veil_compiler::generate::GenerateOptions>> {
        let Some(max_new) = self.generate else { return Ok(None) };
        let Some(prompt_len) = self.prompt_len else {
            anyhow::bail!("--generate needs --prompt-len P (the number of prompt tokens)");
        };
        Ok(Some(veil_compiler::generate::GenerateOptions {
            prompt_len,
            max_new,
            sample: self.sample,
            top_k: self.top_k,
        }))
    }
}

/// How nonlinear layers are lowered.
#[derive(clap::Args, Clone, Debug)]
pub struct LoweringArgs {
    #[command(flatten)]
    pub nonlinear: NonlinearArgs,
    /// Value ranges from `veil calibrate` (same model, same --nonlinear flags); --nonlinear smu
    /// needs them for its comparison-free inverse square roots.
    #[arg(long, value_name = "FILE.json")]
    pub calibration: Option<PathBuf>,
    /// Calibrated ranges are widened by this factor ([lo/M, hi·M], |x| ≤ M·max|x|): inputs
    /// beyond the widened range make the Newton iteration diverge.
    #[arg(long, default_value_t = 1.5, value_name = "M")]
    pub calibration_margin: f64,
    /// Compile a generation program (set from `--generate` or by `veil generate`).
    #[arg(skip)]
    pub generate: Option<veil_compiler::generate::GenerateOptions>,
    /// Encrypted token pruning with the thresholds in FILE (from `veil calibrate --prune-keep`;
    /// format in the README): after each listed attention layer, tokens that receive little
    /// attention are dropped under MPC and the rest of the model runs on fewer tokens. Only the
    /// number kept is revealed (to both parties and the dealer). Needs a model whose sequence
    /// length can be chosen and whose outputs have no token axis (a CLS row or a pooled vector).
    #[arg(long, value_name = "FILE.json")]
    pub prune: Option<PathBuf>,
}

impl Default for LoweringArgs {
    fn default() -> Self {
        LoweringArgs {
            nonlinear: NonlinearArgs::default(),
            calibration: None,
            calibration_margin: 1.5,
            generate: None,
            prune: None,
        }
    }
}

/// Which weights need no secrecy (Marill: the unchanged weights of an open base model).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PublicArgs {
    /// Weights that are public, by name glob (`*` any run of characters, `?` one); repeatable,
    /// e.g. --public 'm.embeddings.*' --public '*.layer.0.*'. A glob matching nothing is an error.
    #[arg(long = "public", value_name = "GLOB")]
    pub globs: Vec<String>,
    /// The open base checkpoint (.safetensors or .onnx) the model was fine-tuned from: a weight
    /// is public when its bytes equal the same-named (or, failing that, any) tensor there.
    #[arg(long, value_name = "FILE")]
    pub public_weights: Option<PathBuf>,
    /// With --public-weights: a private matrix that differs from the same-named base matrix by
    /// an update of at most this rank (a merged LoRA checkpoint) is compiled as the public base
    /// product plus two thin private products, x·W0 + (x·A)·B; the split is exact up to f32
    /// rounding. The summary lists what was split and what was not.
    #[arg(long, value_name = "R", requires = "public_weights")]
    pub lora_rank: Option<usize>,
}

/// The recipe the flags describe.
pub fn recipe(
    file: &Path,
    margs: &ModelArgs,
    pa: &PublicArgs,
    la: &LoweringArgs,
    frac_bits: u8,
) -> Result<Recipe> {
    if la.nonlinear.nonlinear == Nonlinear::Exact && la.calibration.is_some() {
        anyhow::bail!("--calibration is used by --nonlinear smu only");
    }
    let prune = la.prune.as_deref().map(crate::prune::read_config).transpose()?;
    Ok(Recipe {
        version: veil_compiler::recipe::VERSION,
        model: margs.spec(file)?,
        frac_bits,
        nonlinear: la.nonlinear.recipe(la.calibration.clone(), la.calibration_margin),
        public: PublicSpec {
            globs: pa.globs.clone(),
            base: pa.public_weights.clone(),
            lora_rank: pa.lora_rank,
        },
        generate: la.generate,
        prune,
    })
}

/// Compiles `file` and writes the artifacts; returns what was compiled and where it went.
pub fn compile_file(
    file: &Path,
    margs: &ModelArgs,
    pa: &PublicArgs,
    frac_bits: u8,
    out: &Path,
) -> Result<(Compiled, artifacts::Paths)> {
    compile_file_with(file, margs, pa, &LoweringArgs::default(), frac_bits, out)
        .map(|(c, p, _)| (c, p))
}

/// The summary lines of the SMU lowering (empty for the exact one).
fn lowering_lines(b: &Built) -> String {
    let Nonlinear2::Smu { alpha, mu, margin, .. } = &b.recipe.nonlinear else {
        return String::new();
    };
    let Some(cal) = &b.lowering.calibration else { return String::new() };
    let rewritten = b.front.rewritten;
    let mut s = format!(
        "--nonlinear smu (α = {alpha}, μ = {mu}): every square root, reciprocal and layer norm by a comparison-free inverse square root on ranges calibrated on {} sample(s) (widened ×{margin})\n",
        cal.samples
    );
    match &cal.function_change {
        // Only divisions were rewritten (a/b = a·(1/b)): the same function up to f32 rounding.
        Some(f) if f.max_abs <= 1e-5 * f.max_ref.max(1.0) => s.push_str(&format!(
            "  {rewritten} division(s) rewritten as products by a reciprocal; the model has no GELU or softmax, so its function is unchanged (outputs within {:.1e} on the calibration inputs)\n",
            f.max_abs
        )),
        Some(f) if rewritten > 0 => s.push_str(&format!(
            "  {rewritten} GELU, softmax or division operator(s) rewritten: this CHANGES the model's function: on the calibration inputs its outputs move by up to {:.3e} ({:.2e} of max |y| = {:.3}); the plaintext reference of `veil run` is the rewritten model\n",
            f.max_abs,
            f.max_abs / f.max_ref.max(1e-30),
            f.max_ref
        )),
        _ => s.push_str("  nothing rewritten: the model has no GELU, softmax or division; its function is unchanged\n"),
    }
    s
}

/// The summary lines of a `--lora-rank` split (empty without one).
fn split_lines(b: &Built) -> String {
    let Some((rank, out)) = &b.front.split else { return String::new() };
    let mut s = format!(
        "--lora-rank {rank}: {} matrices split into public base + private rank-r factors",
        out.split.len()
    );
    let worst = out.split.iter().fold(0f64, |m, x| m.max(x.residual));
    if !out.split.is_empty() {
        let ranks: std::collections::BTreeSet<usize> = out.split.iter().map(|x| x.rank).collect();
        let ranks: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
        s.push_str(&format!(
            " (r = {}; largest residual {worst:.1e} of the weight's largest entry)",
            ranks.join(", ")
        ));
    }
    s.push('\n');
    for (name, why) in &out.kept {
        s.push_str(&format!("  kept private whole: {name} ({why})\n"));
    }
    s
}

/// As [`compile_file`], also returning the partition summary (empty when nothing is public).
pub fn compile_file_with(
    file: &Path,
    margs: &ModelArgs,
    pa: &PublicArgs,
    la: &LoweringArgs,
    frac_bits: u8,
    out: &Path,
) -> Result<(Compiled, artifacts::Paths, String)> {
    compile_observed(file, margs, pa, la, frac_bits, out, &Observer::default())
}

/// As [`compile_file_with`], telling `observer` the graph after each pipeline stage.
pub fn compile_observed(
    file: &Path,
    margs: &ModelArgs,
    pa: &PublicArgs,
    la: &LoweringArgs,
    frac_bits: u8,
    out: &Path,
    observer: &Observer,
) -> Result<(Compiled, artifacts::Paths, String)> {
    let recipe = recipe(file, margs, pa, la, frac_bits)?;
    let mut done = 0;
    let built = recipe.compile(
        &mut |len, total| {
            done += 1;
            eprintln!("  compiling at {len} tokens ({done}/{total})");
        },
        observer,
    );
    let built = match (&la.prune, built) {
        (Some(path), Err(e)) => {
            return Err(anyhow::Error::new(e).context(format!("--prune {}", path.display())))
        }
        (_, b) => b?,
    };
    let mut summary = lowering_lines(&built)
        + &split_lines(&built)
        + &partition_lines(&built.front.graph, &built.front.public);
    let c = built.compiled;
    let p = artifacts::write(&c, out)?;
    if !built.front.public.is_empty() {
        let (nodes, macs) = plaintext_work(&c.client.graph);
        summary.push_str(&format!(
            "in the clear at the client: {nodes} operations, {:.2} G multiply-adds of matrix products, 0 B online (f32, before the session)\n",
            macs as f64 / 1e9
        ));
    }
    if let Some(all) = &built.all_private {
        // The same model with every weight private, for the saving.
        let (a, b) =
            (veil_isa::cost::program_cost(all).body, veil_isa::cost::program_cost(&c.program).body);
        let (ab, bb) = (a.sent[0] + a.sent[1], b.sent[0] + b.sent[1]);
        summary.push_str(&format!(
            "against every weight private: online {} → {} per inference ({:.2}× fewer bytes), rounds {} → {}\n",
            crate::report::bytes(ab),
            crate::report::bytes(bb),
            ab as f64 / bb.max(1) as f64,
            a.rounds,
            b.rounds
        ));
    }
    Ok((c, p, summary))
}

/// The client's plaintext part: operations and multiply-adds of its matrix products.
fn plaintext_work(g: &veil_compiler::ir::Graph) -> (usize, u64) {
    let mut macs = 0u64;
    for &n in &g.order {
        let nd = &g.nodes[n];
        if matches!(nd.op, veil_compiler::ir::Op::MatMul) {
            let a = &g.ty(nd.args[0]).shape;
            let k = a.last().copied().unwrap_or(1) as u64;
            macs += g.ty(nd.result).numel() as u64 * k;
        }
    }
    (g.order.len(), macs)
}

/// Which weights are public and which layers therefore run in the clear at the client.
fn partition_lines(
    g: &veil_compiler::ir::Graph,
    public: &BTreeMap<String, public::Reason>,
) -> String {
    if public.is_empty() {
        return String::new();
    }
    let mut per_layer: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let (mut n_pub, mut p_pub, mut p_all) = (0, 0, 0);
    // Exporters' anonymous matrices (`val_49`) are placed by the name export-weights gives them.
    let alias = veil_compiler::frontend::weight_names::descriptive_names(g);
    for w in g.weights() {
        let vd = &g.values[w];
        let name = alias.get(&w).unwrap_or(&vd.name);
        let layer = veil_compiler::ir::provenance::layer_label(name);
        let e = per_layer.entry(layer).or_default();
        e.0 += 1;
        p_all += vd.ty.numel();
        if public.contains_key(&vd.name) {
            e.1 += 1;
            n_pub += 1;
            p_pub += vd.ty.numel();
        } else {
            e.2 += 1;
        }
    }
    let mut s = format!(
        "public weights: {n_pub} tensors, {p_pub} of {p_all} parameters ({:.0}%)\n",
        100.0 * p_pub as f64 / p_all.max(1) as f64
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in public.values() {
        let k = match r {
            public::Reason::Declared => "declared `public` in the model".to_string(),
            public::Reason::Glob(g) => format!("--public '{g}'"),
            public::Reason::Base(_) => "equal to the base checkpoint".to_string(),
            public::Reason::LowRankBase(_) => {
                "the base checkpoint's part of a low-rank update".to_string()
            }
        };
        *reasons.entry(k).or_default() += 1;
    }
    for (k, n) in reasons {
        s.push_str(&format!("  {n} × {k}\n"));
    }
    // layer2 before layer10
    let mut layers: Vec<(&String, &(usize, usize, usize))> = per_layer.iter().collect();
    layers.sort_by_key(|(l, _)| {
        let digits = l.trim_start_matches(|c: char| !c.is_ascii_digit());
        (l.len() - digits.len(), digits.parse::<u64>().ok(), l.to_string())
    });
    let clear: Vec<&str> =
        layers.iter().filter(|(_, c)| c.2 == 0).map(|(l, _)| l.as_str()).collect();
    let mpc: Vec<&str> = layers.iter().filter(|(_, c)| c.2 > 0).map(|(l, _)| l.as_str()).collect();
    s.push_str(&format!(
        "weights all public (computed in the clear by the client where their input is the client's): {}\n",
        if clear.is_empty() { "none".to_string() } else { clear.join(", ") }
    ));
    s.push_str(&format!("private weights (under MPC): {}\n", mpc.join(", ")));
    s
}

/// Compiles and prints the summary.
pub fn run(a: Args) -> Result<()> {
    let out = a.output.clone().unwrap_or_else(|| {
        PathBuf::from(a.file.file_stem().unwrap_or_default()).with_extension("vbc")
    });
    let stages = veil_compiler::recipe::stages();
    let observer = match a.dump_after.as_deref() {
        None => Observer::default(),
        Some(name) if stages.iter().any(|(n, _)| *n == name) => dump_observer(name),
        Some(name) => {
            let list: Vec<String> =
                stages.iter().map(|(n, about)| format!("  {n:<22} {about}")).collect();
            let head = match name {
                "list" => "the pipeline's stages, in order:".to_string(),
                _ => format!("--dump-after: no stage `{name}`; the stages, in order:"),
            };
            if name == "list" {
                println!("{head}\n{}", list.join("\n"));
                return Ok(());
            }
            anyhow::bail!("{head}\n{}", list.join("\n"));
        }
    };
    let t0 = std::time::Instant::now();
    let mut la = a.lowering.clone();
    la.generate = a.generate.options()?;
    let (c, p, partition) =
        compile_observed(&a.file, &a.model, &a.public, &la, a.frac_bits, &out, &observer)?;
    eprintln!("compiled in {:.2} s", t0.elapsed().as_secs_f64());
    let report = format!(
        "{partition}{}wrote:\n  {}  (the program: client, server and dealer)\n  {}  (the client's part: public data only)\n  {}  (the server's weights: keep private)\n",
        summary(&c),
        p.program.display(),
        p.client.display(),
        p.server.display()
    );
    // With a dump on stdout, the report goes to stderr so the dump can be piped alone.
    match a.dump_after {
        Some(_) => eprint!("{report}"),
        None => print!("{report}"),
    }
    Ok(())
}

/// Prints the graph after stage `name`, the first time it runs (a pruned compile runs the
/// back half once per length; the first is the full length).
fn dump_observer(name: &str) -> Observer {
    let name = name.to_string();
    let done = std::sync::atomic::AtomicBool::new(false);
    Observer::new(move |stage, g| {
        if stage == name && !done.swap(true, std::sync::atomic::Ordering::Relaxed) {
            print!("{}", veil_compiler::ir::print::graph_text(g));
        }
    })
}

/// The compile summary: partition, approximations, reveals, predicted cost.
pub fn summary(c: &Compiled) -> String {
    let p = &c.program;
    let mut s = String::new();
    let [public, client, server, shared] = c.visibility;
    s.push_str(&format!(
        "model `{}`: {} instructions ({} setup), {} buffers\n",
        p.meta("model").unwrap_or("?"),
        p.body.len(),
        p.setup.len(),
        p.buffers.len()
    ));
    s.push_str(&format!(
        "values: {public} public, {client} client-only (computed in the clear by the client), {server} server-only, {shared} secret-shared\n"
    ));
    s.push_str(&format!(
        "inputs: {} from the client ({}); weights: {} server-private tensors\n",
        p.inputs.len(),
        p.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
        p.weights.len()
    ));
    let mut approx: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in &c.approximations {
        *approx
            .entry((a.op.split('{').next().unwrap_or(&a.op).to_string(), a.with.clone()))
            .or_default() += 1;
    }
    s.push_str("approximations:\n");
    for ((op, with), n) in approx {
        s.push_str(&format!("  {n} × {op} → {with}\n"));
    }
    if !c.clamped.is_empty() {
        s.push_str(&format!(
            "additive masks: {} constant(s) ≤ −1e9 replaced by a finite −64 ({})\n",
            c.clamped.len(),
            c.clamped.join(", ")
        ));
    }
    s.push_str("reveals (nothing else is revealed to anyone):\n");
    s.push_str(&reveals(p));
    s.push_str("predicted cost (exact: the VM measures the same bytes and rounds):\n");
    s.push_str(&cost_report(p, None, &[Net::Lan, Net::Wan]));
    s
}
