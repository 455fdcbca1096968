//! `veil serve`: the server role. Holds the private weights, listens for clients, and runs one
//! session per client with material from the dealer.

use crate::party::{program, server_weights, ServerSummary};
use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
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
    /// Seconds to wait for any peer message before ending a session.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print a JSON line with each session's measurements on stdout (used by `veil run`).
    #[arg(long)]
    pub report_json: bool,
    /// Interpret local kernels instead of compiling them with the JIT (same results).
    #[arg(long)]
    pub no_jit: bool,
}

/// Serves.
pub fn run(a: Args) -> Result<()> {
    let p = program(&a.program)?;
    let w = server_weights(&a.program, a.weights.as_deref(), &p)?;
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("listening on {}", a.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    eprintln!("server: model `{}`, dealer at {}", p.meta("model").unwrap_or("?"), a.dealer);
    let opts = NetOptions {
        timeout: Duration::from_secs(a.timeout),
        jit: !a.no_jit,
        ..NetOptions::default()
    };
    let mut failed = 0;
    let mut served = 0;
    serve(&listener, &p, &w, &a.dealer, &opts, a.sessions, |r| {
        served += 1;
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
                failed += 1;
                eprintln!("server: session failed: {e}");
            }
        }
    })?;
    if failed > 0 && failed == served {
        bail!("every session failed ({failed})");
    }
    Ok(())
}
