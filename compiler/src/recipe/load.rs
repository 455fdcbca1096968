//! A model file to a graph: ONNX (imported, then the import passes) or DSL (lowered with its
//! parameters from a safetensors file or a seeded random source, then the import passes).

use super::{ModelSpec, RecipeError, WeightsSpec};
use crate::dsl::{lower_model, stdlib_loader, WeightSource};
use crate::frontend::onnx::{import_file, ImportOptions};
use crate::ir::{Graph, Tensor, TensorType};
use std::collections::HashMap;
use std::sync::Mutex;

/// A model ready for the reference evaluator or the compiler.
#[derive(Clone)]
pub struct Loaded {
    /// The graph, after the import passes.
    pub graph: Graph,
    /// Parameters a DSL model declared `public`.
    pub public_params: Vec<String>,
    /// The sequence length, when the model has one that can be chosen: `seq` (ONNX), or the
    /// DSL constant `S`.
    pub seq: Option<usize>,
}

/// Seeded random weights by key, drawn once: token pruning loads the same model at many
/// sequence lengths, and drawing BERT-base's 85 M weights takes seconds each time.
#[derive(Default)]
pub struct RandomMemo(Mutex<HashMap<String, Tensor>>);

/// A random source that looks in a [`RandomMemo`] first.
struct Memoized<'a> {
    random: crate::weights::RandomSource,
    memo: &'a RandomMemo,
}

impl WeightSource for Memoized<'_> {
    fn get(&mut self, key: &str, ty: &TensorType) -> Result<Tensor, String> {
        if let Some(t) = self.memo.0.lock().expect("not poisoned").get(key) {
            if t.ty() == *ty {
                return Ok(t.clone());
            }
        }
        let t = self.random.get(key, ty)?;
        self.memo.0.lock().expect("not poisoned").insert(key.to_string(), t.clone());
        Ok(t)
    }
}

/// Reads the model `spec` names (`.onnx` or `.veil`), drawing random weights through `memo`
/// when given (for loading one model at several sequence lengths).
pub fn load(spec: &ModelSpec, memo: Option<&RandomMemo>) -> Result<Loaded, RecipeError> {
    let path = &spec.file;
    let file = path.display().to_string();
    match path.extension().and_then(|e| e.to_str()) {
        Some("veil") => load_dsl(spec, memo),
        Some("onnx") | None => import_onnx(spec, &import_options(spec), None),
        Some(ext) => Err(RecipeError::Model {
            file,
            msg: format!("unknown model format `.{ext}` (expected .onnx or .veil)"),
        }),
    }
}

fn import_options(spec: &ModelSpec) -> ImportOptions {
    ImportOptions {
        seq: spec.seq,
        batch: spec.batch,
        dims: spec.dims.clone(),
        const_inputs: spec
            .branches
            .iter()
            .map(|(n, b)| (n.clone(), Tensor::bool(Vec::<usize>::new(), vec![*b])))
            .collect(),
    }
}

/// Imports `spec`'s ONNX file with `opts`, keeping only the output `keep` when given.
fn import_onnx(
    spec: &ModelSpec,
    opts: &ImportOptions,
    keep: Option<&str>,
) -> Result<Loaded, RecipeError> {
    let file = spec.file.display().to_string();
    let mut graph = import_file(&spec.file, opts).map_err(RecipeError::Import)?;
    if let Some(keep) = keep {
        graph.outputs.retain(|&v| graph.values[v].name == keep);
        graph.remove_dead_nodes();
        graph = graph.compact();
    }
    crate::passes::run(&mut graph, &mut crate::passes::import_pipeline())
        .map_err(|error| RecipeError::Pass { file: file.clone(), error })?;
    Ok(Loaded { graph, public_params: Vec::new(), seq: spec.seq })
}

/// The model `spec` names as a decoder to generate from: an ONNX export with past key/values
/// (and its attention mask, positions, branch flag) is read as the decoder without past
/// ([`crate::generate::past`]); any other model as [`load`] reads it.
pub fn load_decoder(spec: &ModelSpec) -> Result<Loaded, RecipeError> {
    let onnx = matches!(spec.file.extension().and_then(|e| e.to_str()), Some("onnx") | None);
    let generate = |e: crate::generate::past::PastError| RecipeError::Generate {
        file: spec.file.display().to_string(),
        error: Box::new(e.into()),
    };
    let layout = match onnx {
        true => crate::generate::past::layout(&spec.file).map_err(generate)?,
        false => None,
    };
    let Some(layout) = layout else { return load(spec, None) };
    let opts = layout.plain_decoder(&import_options(spec)).map_err(generate)?;
    let mut m = import_onnx(spec, &opts, Some(&layout.logits))?;
    if !layout.layers.is_empty() {
        let restore = crate::generate::causal::restore_causal_mask(&mut m.graph);
        restore.map_err(|e| RecipeError::Generate {
            file: spec.file.display().to_string(),
            error: Box::new(e),
        })?;
    }
    Ok(m)
}

fn load_dsl(spec: &ModelSpec, memo: Option<&RandomMemo>) -> Result<Loaded, RecipeError> {
    let file = spec.file.display().to_string();
    let err = |msg: String| RecipeError::Model { file: file.clone(), msg };
    let mut loader = stdlib_loader();
    for (n, v) in &spec.dims {
        loader.override_const(n, *v as f64);
    }
    if let Some(n) = spec.seq {
        loader.override_const("S", n as f64);
    }
    loader.load_path(&file).map_err(RecipeError::Dsl)?;
    if let Some(c) = loader.unused_overrides().first() {
        let flag = if c == "S" && spec.seq.is_some() {
            "--seq".to_string()
        } else {
            format!("--dim {c}=…")
        };
        return Err(err(format!(
            "{flag} names the constant `{c}`, which the file does not define"
        )));
    }
    let seq = match loader.constant("S") {
        Some(crate::dsl::lower::Val::Num(x)) if *x >= 1.0 && x.fract() == 0.0 => Some(*x as usize),
        _ => None,
    };
    let names = loader.model_names();
    let name = match (&spec.dsl_model, names.as_slice()) {
        (Some(n), _) => n.clone(),
        (None, [only]) => only.clone(),
        (None, []) => return Err(err("defines no model".into())),
        (None, many) => {
            return Err(err(format!(
                "defines several models ({}); choose one with --model",
                many.join(", ")
            )))
        }
    };
    let mut source: Box<dyn WeightSource + '_> = match &spec.weights {
        WeightsSpec::File(f) => Box::new(
            crate::weights::SafetensorsSource::open(f).map_err(RecipeError::Weights)?,
        ),
        WeightsSpec::Random(seed) => {
            let random = crate::weights::RandomSource::new(*seed);
            match memo {
                Some(memo) => Box::new(Memoized { random, memo }),
                None => Box::new(random),
            }
        }
        WeightsSpec::InModel => return Err(err(
            "a DSL model needs its parameters: pass --weights FILE.safetensors or --random-weights SEED"
                .into(),
        )),
    };
    let m = lower_model(&loader, &name, source.as_mut()).map_err(RecipeError::Dsl)?;
    let mut graph = m.graph;
    crate::passes::run(&mut graph, &mut crate::passes::import_pipeline())
        .map_err(|error| RecipeError::Pass { file: file.clone(), error })?;
    Ok(Loaded { graph, public_params: m.public_params, seq })
}
