//! `veil dealer`: the dealer role. Keeps each epoch's seed (the masks of the server's
//! weights), makes the material of each inference for the server's pool, and hands each
//! client its seed for the inference the server gave it a ticket to; never sees inputs,
//! weights or outputs.

use crate::party::verified_program;
use anyhow::{Context, Result};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use veil_vm::net::role::Role;
use veil_vm::session::{deal, DealerEvent, NetOptions};

/// Arguments of `veil dealer`.
#[derive(clap::Args)]
pub struct Args {
    /// The compiled program (.vbc).
    pub program: PathBuf,
    /// Address to listen on for the parties (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub listen: String,
    /// Stop after making the material of this many inferences (default: run until killed).
    #[arg(long, value_name = "N")]
    pub inferences: Option<usize>,
    /// Seconds to wait for a party.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// For a pruned program, make all material during the query, as the lengths are
    /// revealed. By default the next inference's material is made before its query at the
    /// maximum length and cut to the revealed lengths (faster queries; the dealer holds
    /// about one unpruned inference's material).
    #[arg(long)]
    pub live: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Deals.
pub fn run(a: Args) -> Result<()> {
    let (p, reveals) = verified_program(&a.program)?;
    eprintln!("dealer: {reveals}");
    let p = Arc::new(p);
    let tls = a.tls.config(Role::Dealer)?;
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("listening on {}", a.listen))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let opts = NetOptions {
        timeout: Duration::from_secs(a.timeout),
        tls,
        ahead: !a.live,
        ..NetOptions::default()
    };
    let failed = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    deal(&listener, p, &opts, a.inferences, &stop, |ev| match ev {
        DealerEvent::Epoch { id, new: true } => {
            eprintln!("dealer: epoch {} started", veil_vm::net::tcp::hex(&id[..4]))
        }
        DealerEvent::Epoch { .. } | DealerEvent::Handed => {}
        DealerEvent::AheadReady { bytes, time } => eprintln!(
            "dealer: pruned material made ahead for the next query: {bytes} B at the maximum \
             length in {:.2} s",
            time.as_secs_f64()
        ),
        DealerEvent::Ahead { bytes, time } => eprintln!(
            "dealer: pruned material made before the query: {bytes} B at the maximum length \
             in {:.2} s",
            time.as_secs_f64()
        ),
        DealerEvent::Made { bytes, time, live } => eprintln!(
            "dealer: {}material of one inference: {} B of corrections in {:.2} s",
            if live { "live " } else { "" },
            bytes,
            time.as_secs_f64()
        ),
        DealerEvent::Failed(e) => {
            failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("dealer: {e}");
        }
    })?;
    Ok(())
}
