//! `--nonlinear`: how nonlinear layers are computed, shared by compile and calibrate (which
//! must agree: calibration ranges are keyed by the rewritten graph's node names).

use anyhow::Result;
use veil_compiler::ir::Graph;
use veil_isa::Program;

/// The lowering modes a user chooses from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nonlinear {
    /// Keep the model's function: accurate GELU, max-subtracted softmax, layer norm by Newton
    /// from a comparison-based guess.
    #[default]
    Exact,
    /// Comet's rewrite: GELU → SMU-1, softmax → smu1(x_i)/Σ smu1(x_j), and every square root,
    /// reciprocal and layer norm by one comparison-free inverse square root on calibrated
    /// ranges. Changes a GELU/softmax model's function; needs --calibration.
    Smu,
}

/// The flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NonlinearArgs {
    /// How nonlinear layers are computed (see `veil compile --help`).
    #[arg(long, value_enum, default_value_t = Nonlinear::Exact)]
    pub nonlinear: Nonlinear,
    /// α of the SMU-1 that replaces GELU and softmax's exponential (--nonlinear smu).
    #[arg(long, default_value_t = 0.0, value_name = "A")]
    pub smu_alpha: f32,
    /// μ of that SMU-1 (> 0; smaller is closer to ReLU and needs more Newton steps).
    #[arg(long, default_value_t = 1.0, value_name = "MU")]
    pub smu_mu: f32,
}

impl NonlinearArgs {
    /// The mode as recorded in programs and calibration files (`exact`, `smu 0 1`).
    pub fn label(&self) -> String {
        match self.nonlinear {
            Nonlinear::Exact => "exact".into(),
            Nonlinear::Smu => format!("smu {} {}", self.smu_alpha, self.smu_mu),
        }
    }

    /// Parses [`Self::label`] (a program's `nonlinear` metadata).
    pub fn from_label(s: &str) -> Option<NonlinearArgs> {
        let parts: Vec<&str> = s.split(' ').collect();
        match parts.as_slice() {
            ["exact"] => Some(NonlinearArgs::default()),
            ["smu", a, m] => Some(NonlinearArgs {
                nonlinear: Nonlinear::Smu,
                smu_alpha: a.parse().ok()?,
                smu_mu: m.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// The mode a program was compiled with (exact when it says nothing).
    pub fn of_program(p: &Program) -> Result<NonlinearArgs> {
        match p.meta("nonlinear") {
            None => Ok(NonlinearArgs::default()),
            Some(s) => NonlinearArgs::from_label(s).ok_or_else(|| {
                anyhow::anyhow!("the program's `nonlinear` metadata `{s}` is not a known mode")
            }),
        }
    }

    /// Rewrites `g` for the mode (nothing for `exact`); returns how many operators changed.
    pub fn apply(&self, g: &mut Graph) -> Result<usize> {
        if self.nonlinear == Nonlinear::Exact {
            return Ok(0);
        }
        if !(self.smu_mu.is_finite() && self.smu_mu > 0.0 && self.smu_alpha.is_finite()) {
            anyhow::bail!(
                "--smu-mu must be a positive number and --smu-alpha finite (got μ = {}, α = {})",
                self.smu_mu,
                self.smu_alpha
            );
        }
        let mut pass = veil_compiler::passes::SmuRewrite { alpha: self.smu_alpha, mu: self.smu_mu };
        let n = veil_compiler::passes::Pass::run(&mut pass, g);
        g.remove_dead_nodes();
        veil_compiler::ir::verify(g)
            .map_err(|e| anyhow::anyhow!("the SMU rewrite produced an invalid graph:\n{e}"))?;
        Ok(n)
    }
}
