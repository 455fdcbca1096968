//! `veil stdlib`: the table of stdlib approximations (error in the fixed-point simulator, cost
//! in the compiled bytecode), as in stdlib/README.md.

use anyhow::{bail, Result};

/// Arguments of `veil stdlib`.
#[derive(clap::Args)]
pub struct Args {
    /// Fixed-point fractional bits to measure at (the compiler's default is 16).
    #[arg(long, default_value_t = 16)]
    pub frac_bits: u8,
    /// Measure only this function (e.g. rsqrt_newton).
    #[arg(long)]
    pub function: Option<String>,
}

/// Measures and prints the table (Markdown).
pub fn run(a: Args) -> Result<()> {
    if !(8..=30).contains(&a.frac_bits) {
        bail!("--frac-bits {} is out of range: the ring has 64 bits, use 8..=30", a.frac_bits);
    }
    let fns: Vec<_> = veil_stdlib::ALL
        .iter()
        .filter(|f| a.function.as_deref().is_none_or(|n| n == f.name))
        .collect();
    if fns.is_empty() {
        // A function measured at several ranges appears once in ALL per range: list it once.
        let mut names: Vec<&str> = veil_stdlib::ALL.iter().map(|f| f.name).collect();
        names.dedup();
        bail!(
            "no stdlib function `{}`; the stdlib has: {}",
            a.function.unwrap_or_default(),
            names.join(", ")
        );
    }
    let mut rows = Vec::new();
    for f in fns {
        rows.push(veil_compiler::stdlib_table::measure(f, a.frac_bits)?);
    }
    print!("{}", veil_compiler::stdlib_table::markdown(&rows, a.frac_bits));
    Ok(())
}
