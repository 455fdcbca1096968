//! `veil run`: all three roles on this machine — dealer and server as separate processes
//! over loopback TCP (or threads with `--in-process`) — then outputs, their error against the
//! plaintext reference, and the cost report.

use crate::model::parse_assignment;
use crate::outcome::{print_cost, print_outputs, reference, Measured};
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
    /// Draw every model input at random from this seed instead (reals N(0, 1); for benchmarks
    /// of models whose inputs are reals, such as the DSL examples).
    #[arg(long, value_name = "SEED", conflicts_with = "inputs")]
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
    /// Runs `program` (its server weights next to `path`) with the client's `inputs`.
    pub fn run(
        &self,
        path: &Path,
        program: &veil_isa::Program,
        client: &veil_compiler::compile::ClientPart,
        inputs: &std::collections::HashMap<String, veil_compiler::ir::Tensor>,
    ) -> Result<Outcome> {
        let local = Local {
            path,
            program,
            client,
            inputs,
            timeout: self.timeout,
            jit: !self.no_jit,
            insecure: self.insecure,
        };
        local.run(self.in_process)
    }
}

/// Runs and reports.
pub fn run(a: Args) -> Result<()> {
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
    let r = reference(&p, a.reference.as_deref(), &inputs)?;
    if r.is_none() {
        println!("(no plaintext reference: the source model is not here; pass --reference)");
    }
    print_outputs(&outs, r.as_deref(), a.output.as_deref())?;
    let report = print_cost(&p, &m, &nets);
    if let Some(path) = &a.plot {
        let report = report.context("a pruned program has a per-layer report")?;
        let svg = report?.svg();
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
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
    let r = crate::commands::connect::client_over_tcp(
        p,
        c,
        inputs,
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
    let _ = dealer.finish(false);
    let (outs, mut m) = r?;
    let server_out = server_out?;
    let s: ServerSummary = server_out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the server did not report its measurements")?;
    m.dealer_bytes = s.dealer_bytes;
    m.offline = Duration::from_secs_f64(s.offline_secs);
    m.server = Some(s);
    Ok((outs, m))
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
