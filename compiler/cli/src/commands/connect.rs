//! `veil connect`: the client role. Opens one session with the server and runs one inference
//! per sample through it: the client's plaintext part on its inputs, the two-party program
//! (material from the dealer), the outputs. The epoch's masked weights are kept in a cache, so
//! a returning client downloads them once per epoch, not once per session.

use crate::model::{parse_assignment, random_reals, samples_in};
use crate::outcome::{print_cost, print_outputs, Measured};
use crate::party::{assemble, client_part, model_inputs, preprocess, progress, verified_program};
use crate::report::{bytes, Net};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use veil_compiler::ir::Tensor;
use veil_vm::net::role::Role;
use veil_vm::session::client::ClientEvent;
use veil_vm::session::{ClientSession, NetOptions};

/// Arguments of `veil connect`.
#[derive(clap::Args)]
pub struct Args {
    /// The compiled program (.vbc).
    pub program: PathBuf,
    /// The client's part (default: NAME.client next to the program).
    #[arg(long, value_name = "FILE")]
    pub client_part: Option<PathBuf>,
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub server: String,
    /// The dealer's address.
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub dealer: String,
    /// A model input as NAME=FILE.npy; repeatable (one inference).
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_assignment)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Samples, one inference each: a directory of `<input name>.npy` files (one sample), or
    /// of subdirectories each holding one sample (in name order).
    #[arg(long = "inputs", value_name = "DIR", conflicts_with = "inputs")]
    pub samples: Option<PathBuf>,
    /// Draw each input at random: sample k from SEED + k (reals N(0, 1), token ids uniform
    /// over the table they index, attention masks all ones).
    #[arg(long, value_name = "SEED", conflicts_with_all = ["inputs", "samples"])]
    pub random_inputs: Option<u64>,
    /// Read one sample per line of standard input (`NAME=FILE.npy NAME=FILE.npy ...`) and run
    /// each as it arrives, until the input ends.
    #[arg(long, conflicts_with_all = ["inputs", "samples", "random_inputs"])]
    pub stdin: bool,
    /// Run the samples this many times over (each run a fresh inference).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Write each output to DIR/<output name>.npy (with several inferences or
    /// --report-json, DIR/<k>/<output name>.npy for inference k).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Where to keep the masked weights of each epoch (default: $XDG_CACHE_HOME/veil or
    /// ~/.cache/veil).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Keep no masked weights: every session downloads them.
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Seconds to wait for any peer message.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Network for the time estimate (default: both).
    #[arg(long, value_enum)]
    pub net: Option<Net>,
    /// Interpret local kernels instead of compiling them with the JIT (same results).
    #[arg(long)]
    pub no_jit: bool,
    /// Print a JSON line per inference and one for the session on stdout (for `veil bench
    /// --serve`), instead of the outputs and the cost report.
    #[arg(long)]
    pub report_json: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// The default cache directory.
pub fn default_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("veil"))
}

/// Prints what the client waits for, on stderr.
fn events(server: String, dealer: String) -> Box<dyn FnMut(ClientEvent) + Send> {
    Box::new(move |e| match e {
        ClientEvent::Connecting(r, s) if s % 5 == 1 => {
            let at = if r == Role::Dealer { &dealer } else { &server };
            eprintln!("client: nothing listens at the {r}'s address {at} yet; retrying ({s} s)")
        }
        ClientEvent::Connecting(..) => {}
        ClientEvent::WaitingForMaterial => {
            eprintln!("client: the server's dealer is still making this inference's material")
        }
        ClientEvent::Rotated => {
            eprintln!("client: the server started a new epoch; reconnecting for its masked weights")
        }
        ClientEvent::Setup(true) => eprintln!("client: receiving the epoch's masked weights"),
        ClientEvent::Setup(false) => eprintln!("client: masked weights from the cache"),
    })
}

/// Runs one inference of `inputs` in a fresh session over TCP (no cache: `veil run`);
/// returns outputs and measurements.
pub fn client_over_tcp(
    p: &veil_isa::Program,
    c: &veil_compiler::compile::ClientPart,
    inputs: &HashMap<String, Tensor>,
    server: &str,
    dealer: &str,
    opts: &NetOptions,
) -> Result<(Vec<(String, Tensor)>, Measured)> {
    let t = Instant::now();
    let (feeds, own) = preprocess(c, inputs)?;
    let prefix = t.elapsed();
    let t0 = Instant::now();
    let mut s = ClientSession::connect_with(
        p,
        server,
        dealer,
        opts,
        Some(events(server.into(), dealer.into())),
    )?;
    let (bar, cb) = progress(p);
    s.on_progress(cb);
    let r = s.infer(&feeds);
    bar.finish_and_clear();
    let (revealed, _) = r?;
    let rep = s.close()?;
    let outs = assemble(c, &revealed, &own)?;
    let m = client_measured(rep.report, t0, prefix);
    Ok((outs, m))
}

/// What a run over many samples does with sample k's outputs and online traffic as each
/// finishes.
pub type EachOutput<'a> =
    dyn FnMut(usize, Vec<(String, Tensor)>, &veil_vm::net::CommStats) -> Result<()> + 'a;

/// Runs every sample as one inference of a single session over TCP (no cache: `veil run
/// --dataset`), handing each one's outputs to `each`; returns the session's measurements.
pub fn session_over_tcp(
    p: &veil_isa::Program,
    c: &veil_compiler::compile::ClientPart,
    samples: &[Sample],
    server: &str,
    dealer: &str,
    opts: &NetOptions,
    each: &mut EachOutput<'_>,
) -> Result<Measured> {
    let t0 = Instant::now();
    let mut s = ClientSession::connect_with(
        p,
        server,
        dealer,
        opts,
        Some(events(server.into(), dealer.into())),
    )?;
    let mut prefix = Duration::ZERO;
    for (k, sample) in samples.iter().enumerate() {
        let t = Instant::now();
        let (feeds, own) = preprocess(c, sample)?;
        prefix += t.elapsed();
        let (revealed, q) = s.infer(&feeds).with_context(|| format!("inference {k}"))?;
        each(k, assemble(c, &revealed, &own)?, &q.online)?;
    }
    let rep = s.close()?;
    Ok(client_measured(rep.report, t0, prefix))
}

/// One sample's model inputs.
type Sample = HashMap<String, Tensor>;

/// An inference's outputs, what it measured, and the client's plaintext part's time.
type Finished = (Vec<(String, Tensor)>, veil_vm::session::QueryReport, Duration);

/// Parses one line of `--stdin`.
fn stdin_sample(c: &veil_compiler::compile::ClientPart, line: &str) -> Result<Sample> {
    let given: Vec<(String, PathBuf)> = line
        .split_whitespace()
        .map(|w| parse_assignment(w).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    model_inputs(c, &given)
}

/// Connects and runs the samples.
pub fn run(a: Args) -> Result<()> {
    let (p, reveals) = verified_program(&a.program)?;
    if !a.report_json {
        eprintln!("{reveals}");
    }
    let c = client_part(&a.program, a.client_part.as_deref(), &p)?;
    let tls = a.tls.config(Role::Client)?;
    let mut samples: Vec<Sample> = match (&a.samples, a.random_inputs, a.stdin) {
        (Some(dir), _, _) => samples_in(&c.graph, dir)?,
        (None, Some(seed), _) => vec![random_reals(&c.graph, seed, "--input NAME=FILE.npy")?],
        (None, None, true) => Vec::new(),
        (None, None, false) => vec![model_inputs(&c, &a.inputs)?],
    };
    if let Some(seed) = a.random_inputs {
        for k in 1..a.repeat as u64 {
            samples.push(random_reals(&c.graph, seed.wrapping_add(k), "--input NAME=FILE.npy")?);
        }
    } else {
        let once = samples.clone();
        for _ in 1..a.repeat {
            samples.extend(once.iter().cloned());
        }
    }
    let cache = if a.no_cache { None } else { a.cache.clone().or_else(default_cache) };
    let opts = NetOptions {
        timeout: Duration::from_secs(a.timeout),
        jit: !a.no_jit,
        tls,
        cache,
        ..NetOptions::default()
    };
    let t0 = Instant::now();
    let mut s = ClientSession::connect_with(
        &p,
        &a.server,
        &a.dealer,
        &opts,
        Some(events(a.server.clone(), a.dealer.clone())),
    )
    .map_err(|e| {
        // Name the address once: most transport errors already do.
        let named = e.to_string().contains(&a.server);
        let e = anyhow::Error::new(e);
        match named {
            true => e.context("opening a session"),
            false => e.context(format!("opening a session with the server at {}", a.server)),
        }
    })?;
    let setup = s.setup();
    let connected = t0.elapsed();
    let mut lines = std::io::stdin().lock().lines();
    let mut k = 0usize;
    let mut last: Option<Finished> = None;
    let many = a.stdin || samples.len() > 1;
    let mut pending = samples.into_iter();
    loop {
        let sample = if a.stdin {
            match lines.next() {
                None => break,
                Some(l) => {
                    let l = l.context("reading a sample from standard input")?;
                    if l.trim().is_empty() {
                        break;
                    }
                    stdin_sample(&c, &l)?
                }
            }
        } else {
            match pending.next() {
                Some(x) => x,
                None => break,
            }
        };
        let t = Instant::now();
        let (feeds, own) = preprocess(&c, &sample)?;
        let prefix = t.elapsed();
        let (bar, cb) = progress(&p);
        s.on_progress(cb);
        let r = s.infer(&feeds);
        bar.finish_and_clear();
        let (revealed, q) = r.with_context(|| format!("inference {k}"))?;
        let outs = assemble(&c, &revealed, &own)?;
        let latency = t.elapsed();
        if a.report_json {
            let j = serde_json::json!({
                "query": k,
                "latency_secs": latency.as_secs_f64(),
                "material_wait_secs": q.material_wait.as_secs_f64(),
                "body_secs": q.body.as_secs_f64(),
                "prefix_secs": prefix.as_secs_f64(),
                "sent": q.online.sent,
                "received": q.online.received,
                "rounds": q.online.rounds,
            });
            println!("{j}");
            std::io::stdout().flush()?;
        } else if many {
            println!(
                "inference {k}: {:.2} s (online {:.2} s, waited {:.2} s for material); sent {}, received {}, {} rounds",
                latency.as_secs_f64(),
                q.body.as_secs_f64(),
                q.material_wait.as_secs_f64(),
                bytes(q.online.sent),
                bytes(q.online.received),
                q.online.rounds
            );
        }
        if let Some(dir) = &a.output {
            // One inference without a report prints and writes its outputs below.
            if many || a.report_json {
                crate::outcome::write_outputs(&outs, &dir.join(k.to_string()))?;
            }
        }
        last = Some((outs, q, prefix));
        k += 1;
    }
    let rep = s.close()?;
    if k == 0 {
        bail!("no sample to run (standard input was empty)");
    }
    if a.report_json {
        let j = serde_json::json!({
            "session": true,
            "queries": k,
            "connect_secs": connected.as_secs_f64(),
            "setup_sent": setup.sent,
            "setup_received": setup.received,
            "peak_rss": crate::party::peak_rss(),
            "peak_memory": rep.report.peak_memory,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "session: {} inference(s); connected in {:.2} s; masked weights: {}",
        k,
        connected.as_secs_f64(),
        if setup.rounds == 0 {
            "from the cache (nothing downloaded)".to_string()
        } else {
            format!("{} downloaded (once per epoch)", bytes(setup.received))
        }
    );
    if !many {
        let (outs, _, prefix) = last.expect("one inference ran");
        print_outputs(&outs, None, a.output.as_deref())?;
        let m = client_measured(rep.report, t0, prefix);
        let nets = Net::chosen(a.net);
        print_cost(&p, &m, &nets);
    }
    Ok(())
}

/// What the client of a session measured: its report, the session's wall time since `t0`,
/// its plaintext part's time and its peak RSS (the dealer and server figures are not its).
fn client_measured(report: veil_vm::PartyReport, t0: Instant, prefix: Duration) -> Measured {
    Measured {
        dealer_bytes: 0,
        client: report,
        server: None,
        offline: Duration::ZERO,
        session: t0.elapsed(),
        prefix,
        client_rss: crate::party::peak_rss(),
        dealer_rss: None,
    }
}
