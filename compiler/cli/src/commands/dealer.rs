//! `veil dealer`: the dealer role. Sends each party its PRG seed and the server its
//! correction words; never sees inputs, weights or outputs.

use crate::party::program;
use anyhow::{bail, Context, Result};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use veil_vm::session::{deal, NetOptions};

/// Arguments of `veil dealer`.
#[derive(clap::Args)]
pub struct Args {
    /// The compiled program (.vbc).
    pub program: PathBuf,
    /// Address to listen on for the parties (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub listen: String,
    /// Stop after dealing this many sessions (default: forever).
    #[arg(long, value_name = "N")]
    pub sessions: Option<usize>,
    /// Seconds to wait for a party.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Deals.
pub fn run(a: Args) -> Result<()> {
    let p = Arc::new(program(&a.program)?);
    let tls = a.tls.config("dealer")?;
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("listening on {}", a.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let opts = NetOptions { timeout: Duration::from_secs(a.timeout), tls, ..NetOptions::default() };
    let failed = Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    deal(&listener, p, &opts, a.sessions, move |r| match r {
        Ok(d) => eprintln!(
            "dealer: session {} dealt: {} B of corrections in {:.2} s",
            veil_vm::net::tcp::hex(&d.session[..4]),
            d.bytes,
            d.time.as_secs_f64()
        ),
        Err(e) => {
            f.fetch_add(1, Ordering::Relaxed);
            eprintln!("dealer: session failed: {e}");
        }
    })?;
    if a.sessions.is_some() && failed.load(Ordering::Relaxed) > 0 {
        bail!("{} session(s) failed", failed.load(Ordering::Relaxed));
    }
    Ok(())
}
