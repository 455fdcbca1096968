//! `veil run`: all three roles on this machine — dealer and server as separate processes
//! over loopback TCP (or threads with `--in-process`) — then outputs, their error against the
//! plaintext reference, and the cost report.

use crate::model::parse_assignment;
use crate::outcome::{print_cost, print_outputs, reference_run, warn_count_mismatch, Measured};
use crate::party::{
    assemble, client_part, model_inputs, preprocess, server_weights, verified_program,
    ServerSummary,
};
use crate::report::Net;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `veil run`.
#[derive(clap::Args)]
pub struct Args {
    /// The compiled program (.vbc); NAME.client and NAME.server.safetensors must be next to it.
    pub program: PathBuf,
    /// A model input as NAME=FILE.npy; repeatable.
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_assignment)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Draw every model input at random from this seed instead: reals N(0, 1), token ids
    /// uniform over the table they index, attention masks all ones (for benchmarks).
    #[arg(long, value_name = "SEED", conflicts_with_all = ["inputs", "dataset"])]
    pub random_inputs: Option<u64>,
    /// Write each output to DIR/<output name>.npy.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// The plaintext model to compare with (default: the file the program was compiled from,
    /// when it is still there).
    #[arg(long, value_name = "MODEL.onnx")]
    pub reference: Option<PathBuf>,
    /// Network for the time estimate (default: both).
    #[arg(long, value_enum)]
    pub net: Option<Net>,
    /// For a program compiled with --prune: write the per-layer bytes, unpruned and pruned, as
    /// an SVG bar chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub roles: RolesArgs,
    #[command(flatten)]
    pub dataset: crate::dataset::DatasetArgs,
}

/// How the three roles run on this machine (`veil run`, `veil generate`).
#[derive(clap::Args, Clone, Debug)]
pub struct RolesArgs {
    /// Run the three roles as threads over in-memory channels instead of processes over TCP.
    #[arg(long)]
    pub in_process: bool,
    /// Seconds any role waits for a peer message.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Interpret local kernels instead of compiling them with the JIT (same results).
    #[arg(long)]
    pub no_jit: bool,
    /// Plain TCP between the processes instead of TLS with throwaway certificates.
    #[arg(long)]
    pub insecure: bool,
}

impl RolesArgs {
    /// The three roles on this machine for one run, as these flags set them.
    fn local<'a>(
        &self,
        path: &'a Path,
        program: &'a veil_isa::Program,
        client: &'a veil_compiler::compile::ClientPart,
        inputs: &'a std::collections::HashMap<String, veil_compiler::ir::Tensor>,
    ) -> Local<'a> {
        Local {
            path,
            program,
            client,
            inputs,
            timeout: self.timeout,
            jit: !self.no_jit,
            insecure: self.insecure,
        }
    }

    /// Runs `program` (its server weights next to `path`) with the client's `inputs`.
    pub fn run(
        &self,
        path: &Path,
        program: &veil_isa::Program,
        client: &veil_compiler::compile::ClientPart,
        inputs: &std::collections::HashMap<String, veil_compiler::ir::Tensor>,
    ) -> Result<Outcome> {
        self.local(path, program, client, inputs).run(self.in_process)
    }

    /// Runs `program` on every sample, calling `each` with sample k's outputs and its online
    /// traffic as it finishes. Over processes this is one session of many inferences (one
    /// dealer, server and setup); in process, `veil_vm::run_session` runs one inference, so
    /// each sample is a session of its own. Returns the last session's measurements.
    pub fn run_samples(
        &self,
        path: &Path,
        program: &veil_isa::Program,
        client: &veil_compiler::compile::ClientPart,
        samples: &[std::collections::HashMap<String, veil_compiler::ir::Tensor>],
        each: &mut crate::commands::connect::EachOutput<'_>,
    ) -> Result<Measured> {
        if self.in_process {
            let mut last = None;
            for (k, inputs) in samples.iter().enumerate() {
                let local = self.local(path, program, client, inputs);
                let (outs, m) = in_process(&local)?;
                each(k, outs, &m.client.body)?;
                last = Some(m);
            }
            return last.context("a dataset has at least one sample");
        }
        role_processes(path, program, self.timeout, !self.no_jit, self.insecure, |s, d, o| {
            crate::commands::connect::session_over_tcp(program, client, samples, s, d, o, each)
        })
    }
}

/// Runs and reports.
pub fn run(a: Args) -> Result<()> {
    if let Some(dir) = &a.dataset.dataset {
        return dataset(&a, dir);
    }
    let nets = Net::chosen(a.net);
    let (p, _) = verified_program(&a.program)?;
    if a.plot.is_some() && p.dynamic.is_none() {
        bail!(
            "--plot draws the per-layer pruning chart: the program was not compiled with --prune"
        );
    }
    let c = client_part(&a.program, None, &p)?;
    let inputs = match a.random_inputs {
        Some(seed) => random_inputs(&c, seed)?,
        None => model_inputs(&c, &a.inputs)?,
    };
    let (outs, m) = a.roles.run(&a.program, &p, &c, &inputs)?;
    let r = reference_run(&p, a.reference.as_deref(), &inputs)?;
    if r.is_none() {
        println!("(no plaintext reference: the source model is not here; pass --reference)");
    }
    print_outputs(&outs, r.as_ref().map(|r| &r.outputs[..]), a.output.as_deref())?;
    if let Some(plain) = r.as_ref().and_then(|r| r.counts.as_deref()) {
        warn_count_mismatch(plain, &m.client.lengths);
    }
    let report = print_cost(&p, &m, &nets);
    if let Some(path) = &a.plot {
        let report = report.context("a pruned program has a per-layer report")?;
        let svg = report?.svg();
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The plaintext model for a dataset run, imported once; a pruned program's reference depends
/// on the lengths each sample reveals, so it is rebuilt per sample.
enum Plain {
    Graph(Box<veil_compiler::ir::Graph>),
    PerSample,
    None,
}

/// `--dataset`: every sample as one inference of one session, each compared with the
/// plaintext model; agreement, accuracy on the labels, max error.
fn dataset(a: &Args, dir: &Path) -> Result<()> {
    use crate::dataset::{output_index, Dataset, Row, Source, Summary, Task};
    if a.plot.is_some() {
        bail!("--plot draws one run's pruning chart; it does not go with --dataset");
    }
    let (p, _) = verified_program(&a.program)?;
    let c = client_part(&a.program, None, &p)?;
    // Every sample and label is checked before any process starts or anything is written.
    let ds = Dataset::open(dir)?;
    let samples = ds.read(&c.graph)?;
    let plain = match veil_compiler::recipe::Recipe::of_program(&p)? {
        Some(mut r) => match &a.reference {
            Some(f) => {
                r.model.file = f.clone();
                Some(r)
            }
            None if !r.model.file.exists() => None,
            None => Some(r),
        },
        None => None,
    };
    let plain = match plain {
        Some(r) if r.prune.is_none() => Plain::Graph(Box::new(r.reference()?)),
        Some(_) => Plain::PerSample,
        None => Plain::None,
    };
    if matches!(plain, Plain::None) {
        println!("(no plaintext reference: the source model is not here; pass --reference)");
    }
    let labelled = ds.labels.is_some();
    // The task and the output it reads, decided from the plaintext model's output when there
    // is one, else from the first two-party output (before anything is written either way).
    let decide = |names: &[String], shape: &[usize]| -> Result<(usize, Task, &'static str)> {
        let k = output_index(names, a.dataset.task_output.as_deref())?;
        let (task, why) = Task::choose(a.dataset.task, labelled, shape);
        if task == Task::Classify {
            ds.check_classes(&names[k], shape.last().copied().unwrap_or(1))?;
        }
        Ok((k, task, why))
    };
    let header = |names: &[String], k: usize, task: (Task, &str), shape: &[usize]| {
        let src =
            Source { command: "run", file: &a.program, dataset: &ds, task, output: &names[k] };
        src.print_header(Some(shape));
    };
    let mut chosen = None;
    if let Plain::Graph(g) = &plain {
        let names: Vec<String> = g.outputs.iter().map(|&v| g.values[v].name.clone()).collect();
        let k = output_index(&names, a.dataset.task_output.as_deref())?;
        let shape = &g.ty(g.outputs[k]).shape;
        let (k, task, why) = decide(&names, shape)?;
        header(&names, k, (task, why), shape);
        chosen = Some((k, task, why, names[k].clone()));
    }
    let bar = crate::dataset::progress(samples.len());
    let mut rows = Vec::with_capacity(samples.len());
    let mut traffic = veil_vm::net::CommStats::default();
    let t0 = Instant::now();
    let mut each = |i: usize,
                    outs: Vec<(String, veil_compiler::ir::Tensor)>,
                    online: &veil_vm::net::CommStats|
     -> Result<()> {
        let name = &ds.samples[i].0;
        let reference = match &plain {
            Plain::Graph(g) => Some(
                veil_compiler::eval::run(g, &samples[i])
                    .with_context(|| format!("the plaintext reference on sample `{name}`"))?,
            ),
            Plain::PerSample => crate::outcome::reference(&p, a.reference.as_deref(), &samples[i])?,
            Plain::None => None,
        };
        if chosen.is_none() {
            let names: Vec<String> = outs.iter().map(|(n, _)| n.clone()).collect();
            let k = output_index(&names, a.dataset.task_output.as_deref())?;
            let shape = outs[k].1.shape.clone();
            let (k, task, why) = decide(&names, &shape)?;
            header(&names, k, (task, why), &shape);
            chosen = Some((k, task, why, names[k].clone()));
        }
        let (k, task, ..) = chosen.clone().expect("decided above");
        let Some((_, got)) = outs.get(k) else {
            bail!("sample `{name}`: the program gave {} output(s), not output {k}", outs.len());
        };
        rows.push(Row::new(task, name, ds.label(i), reference.as_ref().map(|r| &r[k]), Some(got)));
        if let Some(out) = &a.output {
            crate::outcome::write_outputs(&outs, &out.join(name))?;
        }
        traffic.rounds += online.rounds;
        traffic.sent += online.sent;
        traffic.received += online.received;
        bar.inc(1);
        Ok(())
    };
    let r = a.roles.run_samples(&a.program, &p, &c, &samples, &mut each);
    bar.finish_and_clear();
    let m = r?;
    let secs = t0.elapsed().as_secs_f64();
    let (_, task, why, output) = chosen.context("at least one sample ran")?;
    let summary = Summary::of(&rows);
    summary.print(&rows);
    let n = rows.len() as u64;
    println!(
        "two-party: {n} inference(s) in {}, {secs:.2} s in all; per inference: client sent {}, received {}, {} rounds",
        if a.roles.in_process { "separate in-process sessions" } else { "one session (one dealer, server and setup)" },
        crate::report::bytes(traffic.sent / n),
        crate::report::bytes(traffic.received / n),
        traffic.rounds / n
    );
    if let Some(out) = &a.output {
        println!("wrote each sample's outputs to {}/<sample>/", out.display());
    }
    if let Some(path) = &a.dataset.report_json {
        let src = Source {
            command: "run",
            file: &a.program,
            dataset: &ds,
            task: (task, why),
            output: &output,
        };
        let extra = serde_json::json!({
            "session": if a.roles.in_process { "in-process, one per sample" } else { "one session, processes over TCP" },
            "wall_secs": secs,
            "client_sent": traffic.sent,
            "client_received": traffic.received,
            "rounds": traffic.rounds,
            "dealer_bytes_last_inference": m.dealer_bytes,
        });
        src.write_json(path, &summary, &rows, extra)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Model inputs drawn from `seed`: reals N(0, 1).
pub fn random_inputs(
    c: &veil_compiler::compile::ClientPart,
    seed: u64,
) -> Result<std::collections::HashMap<String, veil_compiler::ir::Tensor>> {
    crate::model::random_reals(&c.graph, seed, "--input")
}

type Outcome = (Vec<(String, veil_compiler::ir::Tensor)>, Measured);

/// One run of the three roles on this machine: what they need.
#[derive(Clone, Copy)]
pub struct Local<'a> {
    /// The program's file (the server's weights and client part sit next to it).
    pub path: &'a Path,
    /// The program.
    pub program: &'a veil_isa::Program,
    /// The client's part.
    pub client: &'a veil_compiler::compile::ClientPart,
    /// The model inputs.
    pub inputs: &'a std::collections::HashMap<String, veil_compiler::ir::Tensor>,
    /// Seconds any role waits for a peer message.
    pub timeout: u64,
    /// Compile local kernels with the JIT.
    pub jit: bool,
    /// Plain TCP between the role processes (else TLS with throwaway certificates).
    pub insecure: bool,
}

impl Local<'_> {
    /// Runs the roles as threads of this process (`in_process`) or as child processes.
    pub fn run(&self, in_process: bool) -> Result<Outcome> {
        if in_process {
            self::in_process(self)
        } else {
            processes(self)
        }
    }
}

/// The three roles in threads of this process.
fn in_process(s: &Local) -> Result<Outcome> {
    let Local { path, program: p, client: c, inputs, timeout, jit, .. } = *s;
    let w = server_weights(path, None, p)?;
    let t = Instant::now();
    let (feeds, own) = preprocess(c, inputs)?;
    let prefix = t.elapsed();
    let client = veil_vm::PartyData { inputs: feeds, weights: vec![] };
    let server = veil_vm::PartyData { weights: w, inputs: vec![] };
    let opts =
        veil_vm::RunOptions { timeout: Duration::from_secs(timeout), jit, ..Default::default() };
    let r = veil_vm::run_session(p, &client, &server, &opts)?;
    let outs = assemble(c, &r.outputs, &own)?;
    let m = Measured {
        server: Some(ServerSummary::from_report(&r.server, r.offline_time)),
        client: r.client,
        dealer_bytes: r.dealer_bytes,
        offline: r.offline_time,
        session: r.online_time,
        prefix,
        client_rss: crate::party::peak_rss(),
        dealer_rss: None,
    };
    Ok((outs, m))
}

/// A child role process whose first stdout line is `listening on ADDR`.
struct Role {
    name: &'static str,
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Role {
    fn spawn(name: &'static str, args: &[String]) -> Result<(Role, String)> {
        let exe = std::env::current_exe().context("locating the veil binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).with_context(|| format!("reading from the {name}"))?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait().ok();
            bail!("the {name} did not start ({status:?}); see its error above");
        };
        let addr = addr.to_string();
        Ok((Role { name, child, out }, addr))
    }

    /// Waits for the process; returns its remaining stdout.
    fn finish(mut self, ok: bool) -> Result<String> {
        if !ok {
            let _ = self.child.kill();
        }
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        let status = self.child.wait()?;
        if ok && !status.success() {
            bail!("the {} exited with {status}", self.name);
        }
        Ok(rest)
    }
}

/// Dealer and server as child processes on loopback, the client here.
fn processes(s: &Local) -> Result<Outcome> {
    let Local { path, program: p, client: c, inputs, timeout, jit, insecure } = *s;
    let mut outs = None;
    let m = role_processes(path, p, timeout, jit, insecure, |server, dealer, opts| {
        let (o, m) = crate::commands::connect::client_over_tcp(p, c, inputs, server, dealer, opts)?;
        outs = Some(o);
        Ok(m)
    })?;
    Ok((outs.context("the client ran")?, m))
}

/// Dealer and server as child processes on loopback for one client session, which `client`
/// runs here (given the server's and the dealer's addresses) and measures; the server's
/// figures are added to its measurements.
pub fn role_processes(
    path: &Path,
    p: &veil_isa::Program,
    timeout: u64,
    jit: bool,
    insecure: bool,
    client: impl FnOnce(&str, &str, &veil_vm::session::NetOptions) -> Result<Measured>,
) -> Result<Measured> {
    // Fail early, before any process starts, when the server's file is missing or stale.
    server_weights(path, None, p)?;
    // TLS as in a deployment, with certificates made for this run and removed after it.
    let keys = if insecure { None } else { Some(Throwaway::new()?) };
    let tls_flags = crate::tls::TlsArgs::child_flags(keys.as_ref().map(|k| k.dir.0.as_path()));
    let client_tls = match &keys {
        Some(k) => Some(k.set.config("client").context("the throwaway client certificate")?),
        None => None,
    };
    let prog = path.display().to_string();
    let t = timeout.to_string();
    let (dealer, dealer_addr) = Role::spawn(
        "dealer",
        &[
            "dealer".into(),
            prog.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--timeout".into(),
            t.clone(),
        ]
        .into_iter()
        .chain(tls_flags.clone())
        .collect::<Vec<String>>(),
    )?;
    let server = Role::spawn(
        "server",
        &[
            "serve".into(),
            prog,
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--dealer".into(),
            dealer_addr.clone(),
            "--sessions".into(),
            "1".into(),
            "--pool".into(),
            "1".into(),
            "--timeout".into(),
            t,
            "--report-json".into(),
        ]
        .into_iter()
        .chain(tls_flags)
        .chain((!jit).then(|| "--no-jit".into()))
        .collect::<Vec<String>>(),
    );
    let (server, server_addr) = match server {
        Ok(x) => x,
        Err(e) => {
            let _ = dealer.finish(false);
            return Err(e);
        }
    };
    let r = client(
        &server_addr,
        &dealer_addr,
        &veil_vm::session::NetOptions {
            timeout: Duration::from_secs(timeout),
            jit,
            tls: client_tls,
            ..Default::default()
        },
    );
    let ok = r.is_ok();
    let server_out = server.finish(ok);
    // The dealer serves until stopped: its work for this run is done once the server is.
    let dealer_rss = crate::party::peak_rss_of(&dealer.child.id().to_string());
    let _ = dealer.finish(false);
    let mut m = r?;
    let server_out = server_out?;
    let s: ServerSummary = server_out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the server did not report its measurements")?;
    m.dealer_bytes = s.dealer_bytes;
    m.dealer_rss = (dealer_rss > 0).then_some(dealer_rss);
    m.offline = Duration::from_secs_f64(s.offline_secs);
    m.server = Some(s);
    Ok(m)
}

/// A fresh temporary directory, removed (with what is in it) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<nanos>`.
    pub fn new(prefix: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificates for one local run, in a private temporary directory removed on drop.
pub struct Throwaway {
    /// Where ca.pem and ROLE.pem/.key are.
    pub dir: TempDir,
    /// The certificates.
    pub set: veil_vm::net::keygen::KeySet,
}

impl Throwaway {
    /// A CA and role certificates for 127.0.0.1.
    pub fn new() -> Result<Throwaway> {
        let set = veil_vm::net::keygen::generate(&["127.0.0.1".to_string()])
            .map_err(anyhow::Error::msg)?;
        let t = Throwaway { dir: TempDir::new("veil-run")?, set };
        std::fs::write(t.dir.0.join("ca.pem"), &t.set.ca_cert)?;
        for (role, cert, key) in &t.set.roles {
            std::fs::write(t.dir.0.join(format!("{role}.pem")), cert)?;
            std::fs::write(t.dir.0.join(format!("{role}.key")), key)?;
        }
        Ok(t)
    }
}
