//! The model flags every command shares, and reading its inputs from files.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::Path;
use veil_compiler::ir::{DType, Graph, Tensor, TensorType};
use veil_compiler::recipe::{ModelSpec, WeightsSpec};

/// Options shared by every command that reads a model.
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// The sequence length: binds every symbolic dimension whose name contains "seq" (ONNX
    /// inputs), or sets the constant `S` of a DSL model.
    #[arg(long, value_name = "N")]
    pub seq: Option<usize>,
    /// Binds every symbolic dimension whose name contains "batch" (default 1).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Binds a symbolic dimension (ONNX) or sets a constant (DSL) by name; repeatable.
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
    pub dims: Vec<(String, usize)>,
    /// Fixes a boolean ONNX input so that an `If` on it compiles one branch (a merged
    /// decoder's `use_cache_branch`: false without past, true with past); repeatable.
    #[arg(long = "branch", value_name = "NAME=true|false", value_parser = parse_branch)]
    pub branches: Vec<(String, bool)>,
    /// The model to use from a DSL file that defines several.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Parameters of a DSL model from a safetensors file (by name).
    #[arg(long, value_name = "FILE.safetensors")]
    pub weights: Option<std::path::PathBuf>,
    /// Parameters of a DSL model drawn at random from this seed (N(0, 0.02) matrices,
    /// layer-norm scales 1 + N(0, 0.1), biases N(0, 0.05)).
    #[arg(long, value_name = "SEED")]
    pub random_weights: Option<u64>,
}

fn parse_dim(s: &str) -> std::result::Result<(String, usize), String> {
    let (n, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))?;
    let v = v.parse().map_err(|_| format!("`{v}` is not a dimension size"))?;
    Ok((n.to_string(), v))
}

fn parse_branch(s: &str) -> std::result::Result<(String, bool), String> {
    let (n, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=true|false, got `{s}`"))?;
    let v = v.parse().map_err(|_| format!("`{v}` is not true or false"))?;
    Ok((n.to_string(), v))
}

pub use veil_compiler::recipe::Loaded;

impl ModelArgs {
    /// The library's model spec for `file` under these flags.
    pub fn spec(&self, file: &Path) -> Result<ModelSpec> {
        let weights = match (&self.weights, self.random_weights) {
            (Some(f), None) => WeightsSpec::File(f.clone()),
            (None, Some(seed)) => WeightsSpec::Random(seed),
            (None, None) => WeightsSpec::InModel,
            (Some(_), Some(_)) => bail!("--weights and --random-weights exclude each other"),
        };
        Ok(ModelSpec {
            file: file.to_path_buf(),
            dsl_model: self.model.clone(),
            seq: self.seq,
            batch: self.batch,
            dims: self.dims.clone(),
            branches: self.branches.clone(),
            weights,
        })
    }
}

/// Reads `path` as ONNX (`.onnx`) or DSL (`.veil`), after the import passes.
pub fn load(path: &Path, args: &ModelArgs) -> Result<Loaded> {
    Ok(veil_compiler::recipe::load(&args.spec(path)?, None)?)
}

/// `margs` with the symbolic dimensions of an ONNX model bound from the shapes of the input
/// files given (as onnxruntime does), where no flag binds them already; a model whose inputs
/// fix its sequence length needs no --seq.
pub fn bind_from_inputs(file: &Path, margs: &ModelArgs, given: &Given) -> Result<ModelArgs> {
    if given.is_empty() || file.extension().and_then(|e| e.to_str()) != Some("onnx") {
        return Ok(margs.clone());
    }
    let symbolic = veil_compiler::frontend::onnx::symbolic_dims(file)?;
    let mut shapes = Vec::new();
    for (name, _, t) in given {
        // Unknown names and unreadable files are reported by `check_inputs`, with the model.
        if let (true, Ok(t)) = (symbolic.iter().any(|(n, _)| n == name), t) {
            shapes.push((name.clone(), t.shape.clone()));
        }
    }
    let bound = veil_compiler::frontend::onnx::bind_from_shapes(&symbolic, &shapes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut out = margs.clone();
    let by_flag = |d: &str| {
        let l = d.to_lowercase();
        margs.dims.iter().any(|(n, _)| n == d)
            || (l.contains("seq") && margs.seq.is_some())
            || (l.contains("batch") && margs.batch.is_some())
    };
    for (d, v) in bound {
        if !by_flag(&d) {
            out.dims.push((d, v));
        }
    }
    // A one-value boolean input given (a merged decoder's `use_cache_branch`) selects the
    // branch veil imports, as --branch does.
    for (name, _, t) in given {
        if let Ok(t) = t {
            let known = symbolic.iter().any(|(n, _)| n == name);
            let flag = out.branches.iter().any(|(n, _)| n == name);
            if known && !flag && t.dtype == DType::Bool && t.numel() == 1 {
                out.branches.push((name.clone(), t.get_f64(0) != 0.0));
            }
        }
    }
    Ok(out)
}

/// The type a graph input needs, for messages.
pub fn describe(t: &TensorType) -> String {
    t.to_string()
}

/// Checks a tensor read from a file against the input it is for.
pub fn check_input(name: &str, file: &Path, t: &Tensor, want: &TensorType) -> Result<()> {
    let have = t.ty();
    let differ: Vec<usize> = match have.dtype == want.dtype && have.shape.len() == want.shape.len()
    {
        true => (0..want.shape.len()).filter(|&i| have.shape[i] != want.shape[i]).collect(),
        false => Vec::new(),
    };
    // One axis off with the right dtype: almost always another sequence length, which the
    // program fixes when it is compiled.
    if let [axis] = differ.as_slice() {
        bail!(
            "input `{name}`: {} holds {have}, the model needs {}: axis {axis} is {} here, {} in the model; for inputs of another length give --seq {} (to eval, calibrate and compile: a compiled program's length is fixed)",
            file.display(),
            describe(want),
            have.shape[*axis],
            want.shape[*axis],
            have.shape[*axis]
        );
    }
    if have != *want {
        bail!(
            "input `{name}`: {} holds {}, the model needs {} (convert with numpy: arr.astype(...).reshape(...))",
            file.display(),
            t.ty(),
            describe(want)
        );
    }
    Ok(())
}

/// Parses `NAME=FILE` pairs.
pub fn parse_assignment(s: &str) -> std::result::Result<(String, std::path::PathBuf), String> {
    let (n, f) = s.split_once('=').ok_or_else(|| format!("expected NAME=FILE.npy, got `{s}`"))?;
    if n.is_empty() || f.is_empty() {
        return Err(format!("expected NAME=FILE.npy, got `{s}`"));
    }
    Ok((n.to_string(), f.into()))
}

/// Reads the `--input NAME=FILE.npy` tensors for the graph's inputs: every input must be
/// given, with the right dtype and shape, and no unknown name.
pub fn read_inputs(
    g: &Graph,
    given: &[(String, std::path::PathBuf)],
) -> Result<std::collections::HashMap<String, Tensor>> {
    check_inputs(g, read_given(given))
}

/// `--input NAME=FILE.npy` files as read, each with its name and path: a file that cannot be
/// read is reported later by [`check_inputs`], after the name is checked against the model.
pub type Given = Vec<(String, std::path::PathBuf, Result<Tensor>)>;

/// Reads every `--input` file once.
pub fn read_given(given: &[(String, std::path::PathBuf)]) -> Given {
    given
        .iter()
        .map(|(name, file)| {
            let t =
                veil_compiler::npy::read(file).with_context(|| format!("reading input `{name}`"));
            (name.clone(), file.clone(), t)
        })
        .collect()
}

/// Checks inputs already read against the graph's: every input given, with the right dtype
/// and shape, and no unknown name.
pub fn check_inputs(g: &Graph, given: Given) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut out = std::collections::HashMap::new();
    for (name, file, t) in given {
        // A one-value boolean is fixed at import by `bind_from_inputs` (its branch taken).
        let flag = t.as_ref().is_ok_and(|t| t.dtype == DType::Bool && t.numel() == 1);
        if flag && !g.inputs.iter().any(|&v| g.values[v].name == name) {
            continue;
        }
        let Some(&v) = g.inputs.iter().find(|&&v| g.values[v].name == *name) else {
            let names: Vec<&str> = g.inputs.iter().map(|&v| g.values[v].name.as_str()).collect();
            bail!("the model has no input `{name}` (inputs: {})", names.join(", "));
        };
        let t = t?;
        check_input(&name, &file, &t, g.ty(v))?;
        out.insert(name.clone(), t);
    }
    let missing: Vec<String> = g
        .inputs
        .iter()
        .filter(|&&v| !out.contains_key(&g.values[v].name))
        .map(|&v| format!("{} ({})", g.values[v].name, g.ty(v)))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing input{}: {} — pass --input NAME=FILE.npy for each",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        );
    }
    Ok(out)
}

/// Every input of `g` drawn from `seed` as reals N(0, 1) (`--random-inputs`); `flag` names how
/// to give non-real inputs instead, for the error.
pub fn random_reals(
    g: &Graph,
    seed: u64,
    flag: &str,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut r = veil_compiler::weights::SplitMix(seed);
    let mut out = std::collections::HashMap::new();
    for &v in &g.inputs {
        let ty = g.ty(v);
        if !ty.dtype.is_float() {
            bail!(
                "--random-inputs draws reals only; input `{}` is {ty} (pass {flag})",
                g.values[v].name
            );
        }
        let data: Vec<f32> = (0..ty.numel()).map(|_| r.normal() as f32).collect();
        out.insert(g.values[v].name.clone(), Tensor::f32(ty.shape.clone(), data));
    }
    Ok(out)
}

/// One sample from a directory of `<name>.npy` files.
pub fn sample_from(g: &Graph, dir: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut out = std::collections::HashMap::new();
    for &v in &g.inputs {
        let name = &g.values[v].name;
        let path = dir.join(format!("{}.npy", crate::commands::eval::file_name(name)));
        if !path.exists() {
            bail!(
                "{}: no file for input `{name}` ({}): expected {}",
                dir.display(),
                g.ty(v),
                path.display()
            );
        }
        let t = veil_compiler::npy::read(&path)
            .with_context(|| format!("reading input `{name}` from {}", path.display()))?;
        check_input(name, &path, &t, g.ty(v))?;
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// Every sample under `dir`: the directory itself, or each of its subdirectories in name order.
pub fn samples_in(g: &Graph, dir: &Path) -> Result<Vec<std::collections::HashMap<String, Tensor>>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut subdirs: Vec<std::path::PathBuf> = Vec::new();
    for e in entries {
        let p = e?.path();
        if p.is_dir() {
            subdirs.push(p);
        }
    }
    subdirs.sort();
    if subdirs.is_empty() {
        return Ok(vec![sample_from(g, dir)?]);
    }
    subdirs.iter().map(|d| sample_from(g, d)).collect()
}
