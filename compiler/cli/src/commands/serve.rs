//! `veil serve`: the server role. Holds the private weights, listens for clients, and runs one
//! session per client with material from the dealer.

use crate::party::{program, server_weights, ServerSummary};
use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use veil_vm::session::{serve, NetOptions};

/// Arguments of `veil serve`.
#[derive(clap::Args)]
pub struct Args {
    /// The compiled program (.vbc).
    pub program: PathBuf,
    /// The server's weights (default: NAME.server.safetensors next to the program).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Address to listen on for clients (port 0: any free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// The dealer's address.
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub dealer: String,
    /// Stop after this many client sessions (default: serve forever).
    #[arg(long, value_name = "N")]
    pub sessions: Option<usize>,
    /// Most client sessions served at once (each with its own dealer material and memory);
    /// further clients wait in the listen queue.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrent: u32,
    /// Memory limit of one session's buffers, in MiB (a program needing more is refused).
    #[arg(long, value_name = "MIB")]
    pub session_memory: Option<u64>,
    /// Seconds to wait for any peer message before ending a session.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print a JSON line with each session's measurements on stdout (used by `veil run`).
    #[arg(long)]
    pub report_json: bool,
    /// Interpret local kernels instead of compiling them with the JIT (same results).
    #[arg(long)]
    pub no_jit: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Serves.
pub fn run(a: Args) -> Result<()> {
    let p = program(&a.program)?;
    let w = server_weights(&a.program, a.weights.as_deref(), &p)?;
    let tls = a.tls.config("server")?;
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("listening on {}", a.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    eprintln!("server: model `{}`, dealer at {}", p.meta("model").unwrap_or("?"), a.dealer);
    let mut opts = NetOptions {
        timeout: Duration::from_secs(a.timeout),
        jit: !a.no_jit,
        concurrent: a.concurrent as usize,
        tls,
        ..NetOptions::default()
    };
    if let Some(mib) = a.session_memory {
        opts.max_memory = mib << 20;
    }
    let failed = AtomicUsize::new(0);
    let served = AtomicUsize::new(0);
    // Sessions end in their own threads: one line of output at a time.
    let out = std::sync::Mutex::new(());
    serve(&listener, &p, &w, &a.dealer, &opts, a.sessions, |r| {
        served.fetch_add(1, Ordering::Relaxed);
        let _line = out.lock();
        match r {
            Ok(rep) => {
                let s = ServerSummary::from_report(&rep.report, rep.offline_time);
                eprintln!(
                    "server: session {} done: sent {} B, received {} B, {} rounds, {:.2} s",
                    veil_vm::net::tcp::hex(&rep.session[..4]),
                    s.sent,
                    s.received,
                    s.rounds,
                    s.body_secs
                );
                if a.report_json {
                    println!("{}", serde_json::to_string(&s).expect("serialises"));
                    let _ = std::io::stdout().flush();
                }
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("server: session failed: {e}");
            }
        }
    })?;
    let (failed, served) = (failed.into_inner(), served.into_inner());
    if failed > 0 && failed == served {
        bail!("every session failed ({failed})");
    }
    Ok(())
}
