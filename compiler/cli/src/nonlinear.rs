//! `--nonlinear`: how nonlinear layers are computed, shared by compile and calibrate (which
//! must agree: calibration ranges are keyed by the rewritten graph's node names); the flags
//! become the recipe's [`veil_compiler::recipe::Nonlinear`].

use std::path::PathBuf;

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
    /// The recipe's nonlinear mode, with the calibration a compile lowers with (`None` to
    /// evaluate or calibrate the rewritten model).
    pub fn recipe(
        &self,
        calibration: Option<PathBuf>,
        margin: f64,
    ) -> veil_compiler::recipe::Nonlinear {
        match self.nonlinear {
            Nonlinear::Exact => veil_compiler::recipe::Nonlinear::Exact,
            Nonlinear::Smu => veil_compiler::recipe::Nonlinear::Smu {
                alpha: self.smu_alpha,
                mu: self.smu_mu,
                calibration,
                margin,
            },
        }
    }
}
