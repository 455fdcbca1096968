//! A [`Recipe`] is everything a compile was asked for: which model (file, dimensions,
//! parameters), the fixed-point precision, how nonlinear layers are computed, which weights
//! are public, and whether the program generates or prunes. It is stored in the program
//! (metadata `recipe`, JSON), and [`Recipe::front`] is the one function that turns the model
//! plus the recipe into the graph every command uses: `compile` compiles it, `run` evaluates
//! its plaintext reference, `calibrate` measures it, `generate` and `prune` start from it. So
//! the reference a run compares against comes from the same graph as the program, by
//! construction.

mod front;
mod lengths;
mod load;

pub use front::{Built, Front, Lowering};
pub use lengths::Lengths;
pub use load::{load, load_decoder, Loaded, RandomMemo};

use crate::compile::CompileError;
use crate::generate::GenerateOptions;
use crate::prune::PruneConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The front half of the pipeline, in order, by the names `--dump-after` takes (the import
/// passes of [`crate::passes::import_pipeline`] run inside `import`); the back half is
/// [`crate::compile::pipeline::BACK`].
pub const FRONT: &[(&str, &str)] = &[
    ("import", "the model read (ONNX or DSL) and the import passes: GELU, layer norm and SMU-1 recognised, attention annotated"),
    ("smu_rewrite", "--nonlinear smu: GELU and softmax rewritten to SMU-1 forms"),
    ("split_low_rank", "--lora-rank: merged low-rank updates split off their public base"),
    ("generation", "--generate: the prefill and decode steps with a secret-shared KV cache"),
];

/// Every stage of the pipeline, front then back, by name.
pub fn stages() -> Vec<(&'static str, &'static str)> {
    let back = crate::compile::pipeline::BACK.iter().map(|s| (s.name, s.about));
    FRONT.iter().copied().chain(back).collect()
}

/// Version of the stored recipe; a program with another one has no reference.
pub const VERSION: u32 = 1;

/// What to compile, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// [`VERSION`].
    pub version: u32,
    /// The model.
    pub model: ModelSpec,
    /// Fixed-point fractional bits.
    pub frac_bits: u8,
    /// How nonlinear layers are computed.
    pub nonlinear: Nonlinear,
    /// Which weights need no secrecy.
    pub public: PublicSpec,
    /// A generation program instead of one forward pass.
    pub generate: Option<GenerateOptions>,
    /// Encrypted token pruning with these thresholds.
    pub prune: Option<PruneConfig>,
}

impl Recipe {
    /// A forward pass of `model` with every weight private and the default lowering.
    pub fn new(model: ModelSpec) -> Recipe {
        Recipe {
            version: VERSION,
            model,
            frac_bits: 16,
            nonlinear: Nonlinear::Exact,
            public: PublicSpec::default(),
            generate: None,
            prune: None,
        }
    }

    /// The metadata entry a program stores the recipe under.
    pub const META: &'static str = "recipe";

    /// The recipe as stored in a program.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a recipe serialises")
    }

    /// The recipe a program was compiled with: `None` for a program compiled without one
    /// (by the library directly, or by an older veil).
    pub fn of_program(p: &veil_isa::Program) -> Result<Option<Recipe>, RecipeError> {
        let Some(json) = p.meta(Self::META) else { return Ok(None) };
        let r: Recipe = serde_json::from_str(json)
            .map_err(|e| RecipeError::Stored(format!("its recipe does not parse: {e}")))?;
        if r.version != VERSION {
            return Err(RecipeError::Stored(format!(
                "recipe version {} (this veil reads {VERSION})",
                r.version
            )));
        }
        Ok(Some(r))
    }
}

/// Where the model comes from and how its free dimensions are bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The model file (`.onnx` or `.veil`).
    pub file: PathBuf,
    /// The model to use from a DSL file that defines several.
    pub dsl_model: Option<String>,
    /// The sequence length: binds every symbolic dimension whose name contains "seq" (ONNX),
    /// or sets the constant `S` (DSL).
    pub seq: Option<usize>,
    /// Binds every symbolic dimension whose name contains "batch".
    pub batch: Option<usize>,
    /// Symbolic dimensions (ONNX) or constants (DSL) by name.
    pub dims: Vec<(String, usize)>,
    /// Boolean ONNX inputs fixed at import (an `If` on them compiles one branch, like the
    /// `use_cache_branch` of a merged decoder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<(String, bool)>,
    /// Where a DSL model's parameters come from.
    pub weights: WeightsSpec,
}

/// Where a model's parameters come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum WeightsSpec {
    /// In the model file (ONNX initializers).
    #[default]
    InModel,
    /// A safetensors file, by name.
    File(PathBuf),
    /// Drawn from this seed (N(0, 0.02) matrices, layer-norm scales 1 + N(0, 0.1), biases
    /// N(0, 0.05)).
    Random(u64),
}

/// How nonlinear layers are computed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Nonlinear {
    /// The model's own function: accurate GELU, max-subtracted softmax, layer norm by Newton
    /// from a comparison-based guess.
    #[default]
    Exact,
    /// Comet's rewrite: GELU → SMU-1, softmax → smu1(x_i)/Σ smu1(x_j), every square root,
    /// reciprocal and layer norm by one comparison-free inverse square root on calibrated
    /// ranges.
    Smu {
        /// α of the SMU-1.
        alpha: f32,
        /// μ of the SMU-1 (> 0).
        mu: f32,
        /// The `veil calibrate` file with the value ranges (needed to compile, not to
        /// evaluate the rewritten model).
        calibration: Option<PathBuf>,
        /// Calibrated ranges are widened by this factor.
        margin: f64,
    },
}

impl Nonlinear {
    /// The mode as calibration files record it (`exact`, `smu 0 1`).
    pub fn label(&self) -> String {
        match self {
            Nonlinear::Exact => "exact".into(),
            Nonlinear::Smu { alpha, mu, .. } => format!("smu {alpha} {mu}"),
        }
    }
}

/// Which weights are public (Marill: the unchanged weights of an open base model).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PublicSpec {
    /// Weights public by name glob.
    pub globs: Vec<String>,
    /// The open base checkpoint (.safetensors or .onnx): a weight equal to its tensor there
    /// is public.
    pub base: Option<PathBuf>,
    /// A private matrix within this rank of its base is split into the public base product
    /// plus two thin private products.
    pub lora_rank: Option<usize>,
}

/// Why a recipe could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The model file could not be read or lowered (names the file).
    #[error("{file}: {msg}")]
    Model {
        /// The file.
        file: String,
        /// What went wrong.
        msg: String,
    },
    /// The ONNX importer refused the model.
    #[error(transparent)]
    Import(#[from] crate::frontend::onnx::ImportError),
    /// The DSL front end refused the model.
    #[error(transparent)]
    Dsl(#[from] crate::dsl::DslError),
    /// A weights file could not be read.
    #[error(transparent)]
    Weights(#[from] crate::file_error::FileError),
    /// The options contradict each other or the model (says which flag).
    #[error("{0}")]
    Options(String),
    /// A pass or a rewrite failed (names the pass and the node).
    #[error("{file}: {msg}")]
    Rewrite {
        /// The model file.
        file: String,
        /// What failed.
        msg: String,
    },
    /// An import pass produced an invalid graph (names the pass).
    #[error("{file}: {error}")]
    Pass {
        /// The model file.
        file: String,
        /// The pass's error.
        error: crate::passes::PassError,
    },
    /// The model cannot generate, or its generation graph could not be built.
    #[error("{file}: {error}")]
    Generate {
        /// The model file.
        file: String,
        /// The generation error (names the model and node).
        error: Box<crate::generate::GenerateError>,
    },
    /// A `--public` pattern matches nothing.
    #[error(transparent)]
    Public(#[from] crate::compile::public::PublicError),
    /// Splitting low-rank updates failed.
    #[error(transparent)]
    LowRank(#[from] crate::compile::low_rank::LowRankError),
    /// The compile failed.
    #[error("{file}: {error}")]
    Compile {
        /// The model file.
        file: String,
        /// The compiler's error.
        error: Box<CompileError>,
    },
    /// A program's stored recipe is unusable.
    #[error("the program was compiled with {0}")]
    Stored(String),
}
