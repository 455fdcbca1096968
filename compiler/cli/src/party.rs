//! What the roles share in the CLI: loading a compiled model's files, converting tensors for
//! the VM, the client's session (in process or over TCP), and the progress bar.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use veil_compiler::compile::artifacts::{paths, read_client, read_program, read_server};
use veil_compiler::compile::{client_run, ClientPart};
use veil_compiler::ir::{Data, Tensor};
use veil_isa::Program;
use veil_vm::{PartyReport, Values};

/// A tensor as the VM takes it.
pub fn to_values(t: &Tensor) -> Values {
    match &t.data {
        Data::F32(v) => Values::F32(v.clone()),
        Data::I64(v) => Values::I64(v.clone()),
        Data::F64(v) => Values::F64(v.clone()),
        Data::Bool(v) => Values::I64(v.iter().map(|&b| b as i64).collect()),
    }
}

/// A tensor as the VM takes it, without a copy.
pub fn into_values(t: Tensor) -> Values {
    match t.data {
        Data::F32(v) => Values::F32(v),
        Data::I64(v) => Values::I64(v),
        Data::F64(v) => Values::F64(v),
        Data::Bool(v) => Values::I64(v.iter().map(|&b| b as i64).collect()),
    }
}

/// The server's weights of `program_path` encoded once for all its sessions, each tensor
/// dropped as soon as it is encoded (a server's peak memory is its encoded weights, not
/// three copies of them).
pub fn server_weights_encoded(
    program_path: &Path,
    given: Option<&Path>,
    p: &Program,
) -> Result<veil_vm::interp::SharedWeights> {
    let path = given.map(Path::to_path_buf).unwrap_or_else(|| paths(program_path).server);
    let mut out = Vec::with_capacity(p.weights.len());
    veil_compiler::compile::artifacts::each_server_weight(&path, p, program_path, |name, t| {
        let io = p.weights.iter().find(|io| io.name == name).expect("read by the program's names");
        let data = veil_vm::interp::encode(io, &into_values(t))?;
        out.push((io.buf, std::sync::Arc::new(data)));
        Ok::<_, String>(())
    })?;
    Ok(out)
}

/// Reads and validates a program file.
pub fn program(path: &Path) -> Result<Program> {
    let p = read_program(path)?;
    veil_isa::validate(&p).with_context(|| path.display().to_string())?;
    Ok(p)
}

/// Reads a program a party is about to run and checks it with the leakage analysis every
/// compile runs (it validates too): a program that opens or sends a secret without a fresh
/// mask, or reveals anything but its declared outputs (and pruning counts), is refused with
/// the instruction named. Returns what it reveals.
pub fn verified_program(path: &Path) -> Result<(Program, veil_isa::Reveals)> {
    let p = read_program(path)?;
    let r = veil_isa::verify(&p).with_context(|| {
        format!(
            "{}: refusing to run this program (it did not pass the leakage check)",
            path.display()
        )
    })?;
    Ok((p, r))
}

/// The client's part of `program_path` (default: next to it) checked against the program.
pub fn client_part(program_path: &Path, given: Option<&Path>, p: &Program) -> Result<ClientPart> {
    let path = given.map(Path::to_path_buf).unwrap_or_else(|| paths(program_path).client);
    Ok(read_client(&path, p, program_path)?)
}

/// The server's weights of `program_path` (default: next to it) checked against the program.
pub fn server_weights(
    program_path: &Path,
    given: Option<&Path>,
    p: &Program,
) -> Result<Vec<(String, Values)>> {
    let path = given.map(Path::to_path_buf).unwrap_or_else(|| paths(program_path).server);
    let w = read_server(&path, p, program_path)?;
    Ok(w.iter().map(|(n, t)| (n.clone(), to_values(t))).collect())
}

/// The model inputs checked against the client graph's inputs.
pub fn model_inputs(
    c: &ClientPart,
    given: &[(String, std::path::PathBuf)],
) -> Result<HashMap<String, Tensor>> {
    crate::model::read_inputs(&c.graph, given)
}

/// Program inputs for the VM and the client graph's own outputs.
pub type Feeds = (Vec<(String, Values)>, Vec<Tensor>);

/// The program inputs the client computes from the model inputs, and its own outputs.
pub fn preprocess(c: &ClientPart, inputs: &HashMap<String, Tensor>) -> Result<Feeds> {
    let (feeds, own) = client_run::preprocess(c, inputs).context("the client's plaintext part")?;
    Ok((feeds.iter().map(|(n, t)| (n.clone(), to_values(t))).collect(), own))
}

/// The model outputs from the revealed program outputs and the client's own.
pub fn assemble(
    c: &ClientPart,
    revealed: &[veil_vm::Output],
    own: &[Tensor],
) -> Result<Vec<(String, Tensor)>> {
    let r: Vec<_> =
        revealed.iter().map(|o| (o.name.clone(), o.shape.clone(), o.data.clone())).collect();
    client_run::assemble(c, &r, own).context("assembling the outputs")
}

/// A progress bar over the client's body instructions naming the current layer; hidden when
/// stderr is not a terminal, where a generation program instead prints a line per step
/// (`prefill`, `tok3`, from the `step:layer` tags).
pub fn progress(p: &Program) -> (indicatif::ProgressBar, impl FnMut(usize, usize) + Send + '_) {
    let bar = indicatif::ProgressBar::new(p.body.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:>10} [{bar:40}] {percent:>3}% {elapsed}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let b = bar.clone();
    let mut last = usize::MAX;
    // Steps of a generation program in the order their last instruction runs (instructions of
    // different steps interleave where they do not depend on each other).
    let mut ends: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (i, &t) in p.body_tags.iter().enumerate() {
        if let Some((s, _)) = p.tags.get(t as usize).and_then(|t| t.layer.split_once(':')) {
            ends.insert(s, i);
        }
    }
    let mut ends: Vec<(usize, &str)> = ends.into_iter().map(|(s, i)| (i, s)).collect();
    ends.sort();
    let mut next = 0;
    let cb = move |done: usize, _total: usize| {
        let tag = p.body_tags.get(done.saturating_sub(1)).copied().unwrap_or(0) as usize;
        if tag != last {
            last = tag;
            if let Some(t) = p.tags.get(tag) {
                b.set_message(t.layer.clone());
            }
        }
        while b.is_hidden() && next < ends.len() && ends[next].0 < done {
            eprintln!("client: {} done", ends[next].1);
            next += 1;
        }
        b.set_position(done as u64);
    };
    (bar, cb)
}

/// What the server reports of one session to `veil run` and `veil bench --serve` (a JSON
/// line on its stdout with `--report-json`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct ServerSummary {
    /// Bytes the server sent in the session's inferences.
    pub sent: u64,
    /// Bytes it received in them.
    pub received: u64,
    /// Rounds of the inferences.
    pub rounds: u64,
    /// Bytes of the setup round (the masked weights; 0 for a client that had them).
    pub setup_sent: u64,
    /// Inferences run.
    pub queries: u64,
    /// Dealer bytes used.
    pub dealer_bytes: u64,
    /// Online wall time of the inferences, seconds.
    pub body_secs: f64,
    /// Time the dealer took to make the last inference's material, seconds (offline).
    pub offline_secs: f64,
    /// Peak resident memory of the server process, bytes (Linux).
    pub peak_rss: u64,
    /// The most the session's buffers held at once, bytes.
    pub peak_memory: u64,
    /// What the lifetime analysis declared a session needs (weights included), bytes.
    #[serde(default)]
    pub declared_memory: u64,
}

impl ServerSummary {
    /// From a session's report and the time the dealer took to make material.
    pub fn from_session(s: &veil_vm::session::SessionReport, offline_secs: f64) -> ServerSummary {
        let r = &s.report;
        ServerSummary {
            sent: r.body.sent,
            received: r.body.received,
            rounds: r.body.rounds,
            setup_sent: s.setup.sent,
            queries: s.queries.len() as u64,
            dealer_bytes: r.dealer_bytes,
            body_secs: r.body_time.as_secs_f64(),
            offline_secs,
            peak_rss: peak_rss(),
            peak_memory: r.peak_memory,
            declared_memory: r.declared_memory,
        }
    }

    /// From the in-process run's server report.
    pub fn from_report(r: &PartyReport, offline: Duration) -> ServerSummary {
        ServerSummary {
            sent: r.body.sent,
            received: r.body.received,
            rounds: r.body.rounds,
            setup_sent: r.setup.sent,
            queries: 1,
            dealer_bytes: r.dealer_bytes,
            body_secs: r.body_time.as_secs_f64(),
            offline_secs: offline.as_secs_f64(),
            peak_rss: peak_rss(),
            peak_memory: r.peak_memory,
            declared_memory: r.declared_memory,
        }
    }
}

/// Peak resident set size of this process in bytes (0 where /proc is unavailable).
pub fn peak_rss() -> u64 {
    peak_rss_of("self")
}

/// Peak resident set size (VmHWM) of process `pid` (or `self`) in bytes (0 where /proc is
/// unavailable).
pub fn peak_rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
