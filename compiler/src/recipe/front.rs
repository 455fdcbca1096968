//! The front half of compiling, in one place: the model loaded and rewritten as the recipe
//! says, its public weights chosen (and merged low-rank updates split off their public base),
//! the generation graph built; then the back half ([`crate::compile`]) on that graph.

use super::{load, Lengths, Loaded, Nonlinear, Recipe, RecipeError};
use crate::backend::nonlinear::{Mode, NonlinearOptions};
use crate::backend::partition::Vis;
use crate::compile::calibrate::Calibration;
use crate::compile::pipeline::Observer;
use crate::compile::public::{self, Reason};
use crate::compile::{compile, low_rank, pruned, CompileOptions, Compiled};
use crate::ir::{Graph, Tensor};
use std::collections::BTreeMap;

/// The graph a recipe compiles, and what choosing it decided.
pub struct Front {
    /// The graph to compile: rewritten, low-rank updates split, generation built.
    pub graph: Graph,
    /// The same model with every weight private and nothing split (the baseline of a public
    /// weights saving); only when some weight is public.
    pub all_private: Option<Graph>,
    /// The public weights, and why each is.
    pub public: BTreeMap<String, Reason>,
    /// `--lora-rank`: the rank asked for and what was split.
    pub split: Option<(usize, low_rank::Outcome)>,
    /// Operators the nonlinear rewrite replaced.
    pub rewritten: usize,
    /// The model's choosable sequence length, if it has one.
    pub seq: Option<usize>,
}

/// The lowering options of a recipe, and the calibration they came from.
pub struct Lowering {
    /// The nonlinear lowering's options.
    pub options: NonlinearOptions,
    /// The calibration file read (`--nonlinear smu`).
    pub calibration: Option<Calibration>,
}

impl Recipe {
    fn file(&self) -> String {
        self.model.file.display().to_string()
    }

    /// The model as the recipe's model spec gives it, after the import passes.
    pub fn load(&self) -> Result<Loaded, RecipeError> {
        match self.generate {
            // Generation keeps its own cache: an export's past inputs are bound away.
            Some(_) => super::load::load_decoder(&self.model),
            None => load(&self.model, None),
        }
    }

    /// Applies the recipe's nonlinear rewrite to `g` (nothing for `Exact`); returns how many
    /// operators changed.
    pub fn rewrite(&self, g: &mut Graph) -> Result<usize, RecipeError> {
        let Nonlinear::Smu { alpha, mu, .. } = self.nonlinear else { return Ok(0) };
        if !(mu.is_finite() && mu > 0.0 && alpha.is_finite()) {
            return Err(RecipeError::Options(format!(
                "--smu-mu must be a positive number and --smu-alpha finite (got μ = {mu}, α = {alpha})"
            )));
        }
        let mut pass = crate::passes::SmuRewrite { alpha, mu };
        let n = crate::passes::Pass::run(&mut pass, g);
        g.remove_dead_nodes();
        crate::ir::verify(g).map_err(|e| RecipeError::Rewrite {
            file: self.file(),
            msg: format!("the SMU rewrite produced an invalid graph:\n{e}"),
        })?;
        Ok(n)
    }

    /// The model loaded and rewritten: what calibration measures and generation starts from.
    pub fn rewritten(&self) -> Result<(Loaded, usize), RecipeError> {
        let mut m = self.load()?;
        let n = self.rewrite(&mut m.graph)?;
        Ok((m, n))
    }

    /// `g` as a generation graph when the recipe generates.
    fn generation(&self, g: Graph) -> Result<Graph, RecipeError> {
        match self.generate {
            None => Ok(g),
            Some(go) => crate::generate::generation_graph(&g, go)
                .map_err(|e| RecipeError::Generate { file: self.file(), error: Box::new(e) }),
        }
    }

    /// The plaintext model the compiled program computes (every weight, before any split):
    /// what `veil run` compares with. A pruned recipe's reference is [`Recipe::lengths`].
    pub fn reference(&self) -> Result<Graph, RecipeError> {
        let (m, _) = self.rewritten()?;
        self.generation(m.graph)
    }

    /// The model at every sequence length a pruned compile or its reference needs.
    pub fn lengths(&self) -> Lengths<'_> {
        Lengths::new(self)
    }

    /// The front half: the graph to compile and what choosing it decided.
    pub fn front(&self) -> Result<Front, RecipeError> {
        if self.prune.is_some() {
            return Err(RecipeError::Options(
                "a pruned recipe is compiled at several lengths (see Recipe::compile)".into(),
            ));
        }
        let (mut m, rewritten) = self.rewritten()?;
        self.front_of(&mut m, rewritten, &Observer::default())
    }

    fn front_of(
        &self,
        m: &mut Loaded,
        rewritten: usize,
        observer: &Observer,
    ) -> Result<Front, RecipeError> {
        let original = m.graph.clone();
        let (public, split) = self.public_set(m)?;
        observer.notify("split_low_rank", &m.graph);
        let all_private = match public.is_empty() {
            true => None,
            false => Some(self.generation(original)?),
        };
        let graph = self.generation(std::mem::replace(&mut m.graph, Graph::new("")))?;
        observer.notify("generation", &graph);
        Ok(Front { graph, all_private, public, split, rewritten, seq: m.seq })
    }

    /// The base checkpoint's tensors, when the recipe names one.
    fn base_tensors(&self) -> Result<Option<Vec<(String, Tensor)>>, RecipeError> {
        let Some(f) = &self.public.base else { return Ok(None) };
        let ctx =
            |msg: String| RecipeError::Options(format!("--public-weights {}: {msg}", f.display()));
        Ok(Some(match f.extension().and_then(|e| e.to_str()) {
            Some("onnx") => {
                let spec = super::ModelSpec { file: f.clone(), ..self.model.clone() };
                let g = load(&spec, None).map_err(|e| ctx(e.to_string()))?.graph;
                crate::frontend::weight_names::exported_weights(&g)
            }
            _ => {
                let src =
                    crate::weights::SafetensorsSource::open(f).map_err(|e| ctx(e.to_string()))?;
                let mut v = Vec::new();
                for n in src.names() {
                    v.push((n.clone(), src.tensor(&n).map_err(|e| ctx(format!("`{n}`: {e}")))?));
                }
                v
            }
        }))
    }

    /// The public weights of `m` (name → why), after splitting merged low-rank updates off
    /// their public base.
    #[allow(clippy::type_complexity)]
    fn public_set(
        &self,
        m: &mut Loaded,
    ) -> Result<(BTreeMap<String, Reason>, Option<(usize, low_rank::Outcome)>), RecipeError> {
        let base = self.base_tensors()?;
        let mut public = public::public_weights(
            &m.graph,
            &m.public_params,
            &self.public.globs,
            base.as_deref(),
        )?;
        let (Some(rank), Some(base)) = (self.public.lora_rank, base.as_deref()) else {
            return Ok((public, None));
        };
        let out = low_rank::split_low_rank(&mut m.graph, base, rank, &|n| public.contains_key(n))?;
        for x in &out.split {
            public.insert(format!("{}.base", x.name), Reason::LowRankBase(x.base.clone()));
        }
        Ok((public, Some((rank, out))))
    }

    /// The nonlinear lowering options for the (rewritten) graph `g`: the calibration file
    /// read and checked against the model and the mode.
    pub fn lowering(&self, g: &Graph) -> Result<Lowering, RecipeError> {
        let mut options = NonlinearOptions::default();
        let Nonlinear::Smu { calibration, margin, .. } = &self.nonlinear else {
            return Ok(Lowering { options, calibration: None });
        };
        options.mode = Mode::Smu;
        if !(margin.is_finite() && *margin >= 1.0) {
            return Err(RecipeError::Options(format!(
                "--calibration-margin must be at least 1 (got {margin})"
            )));
        }
        options.margin = *margin;
        let Some(path) = calibration else {
            return Err(RecipeError::Options(
                "--nonlinear smu needs --calibration FILE: its inverse square roots start from a \
                 guess fitted to each site's value range (run `veil calibrate MODEL --random-inputs \
                 1 --nonlinear smu -o FILE` or with --inputs DIR)"
                    .into(),
            ));
        };
        let cal = crate::compile::calibrate::read(path).map_err(RecipeError::Weights)?;
        let label = self.nonlinear.label();
        if cal.model != g.name || cal.nonlinear != label {
            return Err(RecipeError::Options(format!(
                "{}: calibrated model `{}` with --nonlinear `{}`, but this is model `{}` with `{label}`",
                path.display(),
                cal.model,
                cal.nonlinear,
                g.name
            )));
        }
        // A pruned row sums fewer terms (its softmax's SMU sum, its layer norm's variance
        // over kept rows): ranges from the full-length run need not cover it, nor the pruned
        // run's ranges an unpruned one.
        let want = self.prune.as_ref().map(|c| c.to_json());
        if cal.prune != want {
            let how = match &cal.prune {
                Some(_) => "over a pruned run (`veil calibrate … --prune`)",
                None => "without pruning",
            };
            let fix = match &want {
                Some(_) => "calibrate again with `--prune` and the same thresholds file",
                None => "calibrate again without `--prune`, or compile with the thresholds it used",
            };
            return Err(RecipeError::Options(format!(
                "{}: calibrated {how}{}, which does not match this compile; {fix}",
                path.display(),
                if cal.prune.is_some() && want.is_some() { " with other thresholds" } else { "" },
            )));
        }
        options.ranges = cal.ranges();
        Ok(Lowering { options, calibration: Some(cal) })
    }

    /// The recipe with every file it names made absolute (what a program stores, so that a
    /// run elsewhere finds them).
    pub fn absolute(&self) -> Result<Recipe, RecipeError> {
        let abs = |p: &std::path::PathBuf| {
            std::fs::canonicalize(p).map_err(|e| {
                RecipeError::Weights(crate::file_error::FileError::Io {
                    path: p.display().to_string(),
                    error: e,
                })
            })
        };
        let mut r = self.clone();
        r.model.file = abs(&r.model.file)?;
        if let super::WeightsSpec::File(f) = &r.model.weights {
            r.model.weights = super::WeightsSpec::File(abs(f)?);
        }
        if let Some(b) = &r.public.base {
            r.public.base = Some(abs(b)?);
        }
        if let Nonlinear::Smu { calibration: Some(c), .. } = &mut r.nonlinear {
            *c = abs(c)?;
        }
        Ok(r)
    }

    /// Compiles the recipe: the front half, then the back half at one length, or at every
    /// length a pruned program needs (`on_length` hears each). Returns the program, the
    /// front's decisions, the lowering, and for a recipe with public weights the same
    /// model compiled with every weight private (the saving's baseline).
    pub fn compile(
        &self,
        on_length: &mut dyn FnMut(usize, usize),
        observer: &Observer,
    ) -> Result<Built, RecipeError> {
        if self.prune.is_some() && (self.generate.is_some() || self.public.lora_rank.is_some()) {
            return Err(RecipeError::Options(
                "--prune does not combine with --generate or --lora-rank".into(),
            ));
        }
        let recipe = self.absolute()?;
        let lengths = recipe.lengths();
        let mut m = match recipe.prune {
            Some(_) => lengths.load()?,
            None => recipe.load()?,
        };
        observer.notify("import", &m.graph);
        let rewritten = recipe.rewrite(&mut m.graph)?;
        observer.notify("smu_rewrite", &m.graph);
        let lowering = recipe.lowering(&m.graph)?;
        let at_n = recipe.prune.as_ref().map(|_| m.graph.clone());
        let front = recipe.front_of(&mut m, rewritten, observer)?;
        let mut meta = vec![
            ("source".to_string(), recipe.model.file.display().to_string()),
            ("compiler".to_string(), format!("veil {}", env!("CARGO_PKG_VERSION"))),
        ];
        let g = &front.graph;
        for (i, &v) in g.inputs.iter().enumerate() {
            meta.push((format!("input{i}"), format!("{}: {}", g.values[v].name, g.ty(v))));
        }
        // Stored with the length the model has (a DSL model's `S` when no --seq was given),
        // which loads the same graph: a pruned program's reference needs it.
        let mut stored = recipe.clone();
        stored.model.seq = stored.model.seq.or(front.seq);
        meta.push((Recipe::META.to_string(), stored.to_json()));
        let opts = CompileOptions {
            frac_bits: recipe.frac_bits,
            meta,
            nonlinear: lowering.options.clone(),
            token_len: None,
            observer: observer.clone(),
        };
        let public = &front.public;
        let vis = |n: &str| if public.contains_key(n) { Vis::Public } else { Vis::Server };
        let file = recipe.file();
        let failed = |e| RecipeError::Compile { file: file.clone(), error: Box::new(e) };
        let (compiled, all_private) = match &recipe.prune {
            None => {
                let c = compile(front.graph.clone(), &vis, &opts).map_err(failed)?;
                let all = match &front.all_private {
                    Some(g) => Some(compile(g.clone(), &|_| Vis::Server, &opts).map_err(failed)?),
                    None => None,
                };
                (c, all.map(|a| a.program))
            }
            Some(cfg) => {
                let n = front.seq.ok_or_else(|| {
                    RecipeError::Options(format!(
                        "{file}: token pruning needs a model whose sequence length can be chosen: \
                         a DSL model with `const S = …`, or an ONNX export with a dynamic \
                         sequence axis and --seq N"
                    ))
                })?;
                // The model just loaded (every weight private, rewritten) is the one at `n`.
                lengths.keep(n, at_n.expect("kept for --prune"));
                let graph_at = lengths.graph_at();
                let probes = pruned::probe_lengths(n).len();
                let mut progress = |len: usize| on_length(len, probes);
                let c = pruned::compile_pruned(&graph_at, n, cfg, &vis, &opts, &mut progress)
                    .map_err(failed)?;
                (c, None)
            }
        };
        Ok(Built { compiled, front, lowering, all_private, recipe: stored })
    }
}

/// A compiled recipe.
pub struct Built {
    /// The program and each party's artifacts.
    pub compiled: Compiled,
    /// What the front half decided (its graph is the one compiled).
    pub front: Front,
    /// The lowering options and calibration.
    pub lowering: Lowering,
    /// The program with every weight private, when some weight is public.
    pub all_private: Option<veil_isa::Program>,
    /// The recipe as stored in the program (files made absolute).
    pub recipe: Recipe,
}
