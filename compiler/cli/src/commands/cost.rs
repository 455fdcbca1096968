//! `veil cost`: the predicted cost of a compiled program, without running it.

use crate::report::{cost_report, reveals, Net};
use anyhow::Result;
use std::path::PathBuf;

/// Arguments of `veil cost`.
#[derive(clap::Args)]
pub struct Args {
    /// The compiled program (.vbc).
    pub program: PathBuf,
    /// Network for the time estimate (default: both).
    #[arg(long, value_enum)]
    pub net: Option<Net>,
}

/// Prints the report.
pub fn run(a: Args) -> Result<()> {
    let p = crate::party::program(&a.program)?;
    let nets = Net::chosen(a.net);
    println!("{}: model `{}`", a.program.display(), p.meta("model").unwrap_or("?"));
    print!("{}", reveals(&p));
    print!("{}", cost_report(&p, None, &nets));
    Ok(())
}
