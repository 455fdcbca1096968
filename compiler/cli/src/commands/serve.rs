//! `veil serve`: the server role. Holds the private weights, keeps its dealer connected (the
//! epoch's masked weights, a pool of material made while idle), listens for clients, and runs
//! each client's session of one or more inferences.

use crate::party::{server_weights_encoded, verified_program, ServerSummary};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use veil_vm::net::role::Role;
use veil_vm::session::{serve, NetOptions, ServeControl, ServerEvent};

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
    /// Most client sessions served at once (each with its own VM over the shared weights);
    /// further clients wait in the listen queue.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrent: u32,
    /// Inferences of dealer material kept ready, made while no query runs (a query that finds
    /// none waits for the dealer). Each is one inference's correction stream on disk (see
    /// `veil cost`: "dealer" per inference).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub pool: u32,
    /// Directory for the pool and the epoch's masked weights (default: the system's temporary
    /// directory). Each file is unlinked as soon as it is created: its space is freed when the
    /// server ends, however it ends, and nothing is left behind.
    #[arg(long, value_name = "DIR")]
    pub pool_dir: Option<PathBuf>,
    /// Start a new epoch (new weight masks; clients download them again) every this many
    /// hours. Typing `rotate` on the server's standard input does it at once.
    #[arg(long, value_name = "HOURS")]
    pub rotate_every: Option<f64>,
    /// Memory limit of one session, in MiB (a program needing more is refused; a session that
    /// would exceed it at run time ends with an error).
    #[arg(long, value_name = "MIB")]
    pub session_memory: Option<u64>,
    /// Seconds to wait for any peer message before ending a session.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print a JSON line with each session's measurements on stdout (used by `veil run` and
    /// `veil bench --serve`).
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
    let (p, _) = verified_program(&a.program)?;
    let w = server_weights_encoded(&a.program, a.weights.as_deref(), &p)?;
    let tls = a.tls.config(Role::Server)?;
    if let Some(h) = a.rotate_every {
        if !(h > 0.0 && h.is_finite()) {
            bail!("--rotate-every {h}: give a positive number of hours");
        }
    }
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("listening on {}", a.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let f = veil_isa::lifetime::footprint(&p, veil_isa::Party::Server);
    eprintln!(
        "server: model `{}`, dealer at {}; weights {} (shared), {} per session; pool of {}",
        p.meta("model").unwrap_or("?"),
        a.dealer,
        crate::report::bytes(f.weights),
        crate::report::bytes(f.serving()),
        a.pool
    );
    let mut opts = NetOptions {
        timeout: Duration::from_secs(a.timeout),
        jit: !a.no_jit,
        concurrent: a.concurrent as usize,
        tls,
        pool: a.pool as usize,
        pool_dir: a.pool_dir.clone(),
        rotate_every: a.rotate_every.map(|h| Duration::from_secs_f64(h * 3600.0)),
        ..NetOptions::default()
    };
    if let Some(mib) = a.session_memory {
        opts.max_memory = mib << 20;
    }
    let control = std::sync::Arc::new(ServeControl::default());
    // Commands on standard input (an operator's terminal): `rotate`. Detached: a read that
    // never returns must not keep the server from exiting.
    let ctl = control.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "rotate" => {
                    ctl.rotate.store(true, Ordering::Relaxed);
                    eprintln!("server: rotating the epoch (new weight masks)");
                }
                "" => {}
                other => eprintln!("server: unknown command `{other}` (known: rotate)"),
            }
        }
    });
    let failed = AtomicUsize::new(0);
    let served = AtomicUsize::new(0);
    let last_material = Mutex::new((0u64, 0f64));
    // Sessions end in their own threads: one line of output at a time.
    let out = Mutex::new(());
    {
        let r = serve(&listener, &p, w, &a.dealer, &opts, a.sessions, &control, |ev| {
            let _line = out.lock();
            match ev {
                ServerEvent::WaitingForDealer(s) => {
                    if s % 5 == 1 {
                        eprintln!("server: waiting for the dealer at {} ({s} s)", a.dealer)
                    }
                }
                ServerEvent::DealerUp => eprintln!("server: the dealer at {} is back", a.dealer),
                ServerEvent::DealerDown(why) => {
                    eprintln!("server: refusing new sessions: {why}")
                }
                ServerEvent::Epoch { id, bytes, time, rotated } => eprintln!(
                    "server: {}epoch {}: weights masked ({} for each new client) in {:.2} s",
                    if rotated { "new " } else { "" },
                    veil_vm::net::tcp::hex(&id[..4]),
                    crate::report::bytes(bytes),
                    time.as_secs_f64()
                ),
                ServerEvent::Material { bytes, time, ready } => {
                    *last_material.lock().expect("figures") = (bytes, time.as_secs_f64());
                    eprintln!(
                        "server: dealer material for one inference ({}) in {:.2} s; {ready} ready",
                        crate::report::bytes(bytes),
                        time.as_secs_f64()
                    )
                }
                ServerEvent::Session(r) => {
                    served.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(rep) => {
                            let (_, secs) = *last_material.lock().expect("figures");
                            let s = ServerSummary::from_session(&rep, secs);
                            eprintln!(
                                "server: session {} done: {} inference(s); sent {} B, received {} B, {} rounds, {:.2} s online",
                                veil_vm::net::tcp::hex(&rep.session[..4]),
                                rep.queries.len(),
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
                }
            }
        });
        r
    }?;
    let (failed, served) = (failed.into_inner(), served.into_inner());
    if failed > 0 && failed == served {
        bail!("every session failed ({failed})");
    }
    Ok(())
}
