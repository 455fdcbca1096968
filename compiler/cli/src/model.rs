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

/// Model inputs drawn from `seed`: reals N(0, 1); an integer input that indexes a table (token
/// ids, token types: a gather from a table of `D` rows, or the client's one-hot of depth `D`)
/// uniform in `0..D`; an integer input named like an attention mask all ones (no padding).
/// Any other integer input is refused, naming `flag` as the way to give it.
pub fn random_reals(
    g: &Graph,
    seed: u64,
    flag: &str,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut r = veil_compiler::weights::SplitMix(seed);
    let mut out = std::collections::HashMap::new();
    for &v in &g.inputs {
        let ty = g.ty(v);
        let name = &g.values[v].name;
        let t = if ty.dtype.is_float() {
            let data: Vec<f32> = (0..ty.numel()).map(|_| r.normal() as f32).collect();
            Tensor::f32(ty.shape.clone(), data)
        } else if let Some(depth) = index_depth(g, v) {
            let ids = (0..ty.numel()).map(|_| (r.next_u64() % depth as u64) as i64).collect();
            integers(ty, ids)
        } else if name.to_lowercase().contains("mask") {
            integers(ty, vec![1; ty.numel()])
        } else {
            bail!(
                "--random-inputs draws reals, token ids (for an input that indexes a table) and \
                 all-ones attention masks; input `{name}` is {ty} and none of these (pass {flag})"
            );
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// A tensor of integer (or boolean) type `ty` holding `values`.
fn integers(ty: &TensorType, values: Vec<i64>) -> Tensor {
    use veil_compiler::ir::Data;
    let data = match ty.dtype {
        DType::Bool => Data::Bool(values.iter().map(|&v| v != 0).collect()),
        _ => Data::I64(values),
    };
    Tensor { dtype: ty.dtype, shape: ty.shape.clone(), data }
}

/// The number of rows the integer input `v` indexes, if it does: the table of a gather along
/// axis 0, or the depth of the client's one-hot (an equality with the constant `0..D`), reached
/// through casts and reshapes.
fn index_depth(g: &Graph, v: veil_compiler::ir::Value) -> Option<usize> {
    use veil_compiler::ir::Op;
    let mut seen = vec![v];
    let mut at = 0;
    while at < seen.len() {
        let cur = seen[at];
        at += 1;
        for &n in &g.order {
            let nd = &g.nodes[n];
            if !nd.args.contains(&cur) {
                continue;
            }
            match &nd.op {
                Op::Gather { axis: 0 } if nd.args.get(1) == Some(&cur) => {
                    return g.ty(nd.args[0]).shape.first().copied();
                }
                Op::Equal => {
                    let other = if nd.args[0] == cur { nd.args[1] } else { nd.args[0] };
                    let range = g.const_data(other).filter(|t| t.shape.len() == 1)?;
                    let d = range.shape[0];
                    let ok = range.to_f64_vec().iter().enumerate().all(|(i, &x)| x == i as f64);
                    if ok && d > 0 {
                        return Some(d);
                    }
                }
                Op::Cast { .. } | Op::Reshape { .. } => seen.push(nd.result),
                _ => {}
            }
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::random_reals;
    use veil_compiler::ir::{DType, Graph, Op, Tensor, TensorType};

    /// ids gather from a table of 10 rows; a mask; an integer used otherwise.
    fn graph(with_step: bool) -> Graph {
        let mut g = Graph::new("inputs");
        let ids = g.add_input("input_ids", TensorType::new(DType::I64, vec![2, 8]));
        let mask = g.add_input("attention_mask", TensorType::new(DType::I64, vec![2, 8]));
        let x = g.add_input("x", TensorType::new(DType::F32, vec![3]));
        let table = g.add_weight("emb", Tensor::zeros(&TensorType::new(DType::F32, vec![10, 3])));
        let flat = g.add_node("flat", Op::Reshape { shape: vec![16] }, &[ids], "flat").unwrap();
        let e = g.add_node("gather", Op::Gather { axis: 0 }, &[table, flat], "e").unwrap();
        let m = g.add_node("m", Op::Cast { to: DType::F32 }, &[mask], "m").unwrap();
        g.outputs = vec![e, m, x];
        if with_step {
            let step = g.add_input("step", TensorType::new(DType::I64, vec![1]));
            let s = g.add_node("s", Op::Cast { to: DType::F32 }, &[step], "s").unwrap();
            g.outputs.push(s);
        }
        g
    }

    #[test]
    fn token_ids_index_their_table_and_a_mask_is_all_ones() {
        let got = random_reals(&graph(false), 7, "--input").unwrap();
        let ids = got["input_ids"].to_i64_vec();
        assert!(ids.iter().all(|&i| (0..10).contains(&i)), "{ids:?}");
        assert!(ids.iter().any(|&i| i != ids[0]), "ids are drawn, not constant: {ids:?}");
        assert_eq!(got["input_ids"].dtype, DType::I64);
        assert!(got["attention_mask"].to_i64_vec().iter().all(|&v| v == 1));
        assert_eq!(got["x"].shape, vec![3]);
        // The same seed draws the same sample.
        assert_eq!(
            random_reals(&graph(false), 7, "--input").unwrap()["input_ids"],
            got["input_ids"]
        );
    }

    #[test]
    fn another_integer_input_is_refused_by_name() {
        let e = random_reals(&graph(true), 7, "--input NAME=FILE.npy").unwrap_err().to_string();
        assert!(e.contains("`step`") && e.contains("--input NAME=FILE.npy"), "{e}");
    }
}
