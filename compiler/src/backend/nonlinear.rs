//! `lower_nonlinear`: replaces high-level operators on secret data with the stdlib
//! approximations (written in the DSL), so the backend sees only primitive operators.
//!
//! The default keeps the model's function: accurate GELU (erf or tanh form as the model
//! says), max-subtracted softmax, layer norm by Newton inverse square root, and square roots,
//! reciprocals and divisions by secrets with no known range by the octave functions (their
//! domain is every positive fixed-point value). Every replacement is recorded with the stdlib
//! function used, for the compile summary.

use crate::backend::partition::{Partition, Vis};
use crate::dsl::loader::Loader;
use crate::dsl::lower::{instantiate, Val};
use crate::ir::{GeluApprox, Graph, Op, Tensor, Value};
use std::collections::BTreeMap;

/// One replacement: node name, operator, stdlib function.
#[derive(Clone, Debug, PartialEq)]
pub struct Approximation {
    /// The replaced node.
    pub node: String,
    /// The operator it computed.
    pub op: String,
    /// The stdlib function now computing it.
    pub with: String,
}

/// How nonlinear operators on secrets are lowered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Keep the model's function: accurate GELU, max-subtracted softmax, octave-guess Newton.
    #[default]
    Exact,
    /// Comet's rewrite (see `passes::SmuRewrite`): every square root, reciprocal and layer
    /// norm by the comparison-free `rsqrt_fit` on calibrated ranges.
    Smu,
}

/// Options of the nonlinear lowering.
#[derive(Clone, Debug)]
pub struct NonlinearOptions {
    /// Finite value replacing huge negative additive-mask constants (≤ -1e9) before softmax.
    pub mask_value: f32,
    /// Variance range assumed by layer norm's inverse square root.
    pub var_range: (f64, f64),
    /// Lowering mode.
    pub mode: Mode,
    /// Calibrated argument ranges (min, max) by node name; for a layer norm, of the row
    /// variance plus eps (see `compile::calibrate`).
    pub ranges: BTreeMap<String, (f64, f64)>,
    /// Calibrated ranges are widened by this factor: [lo/margin, hi·margin], |x| ≤ m·margin.
    pub margin: f64,
    /// Worst relative error of each comparison-free inverse square root.
    pub rel: f64,
    /// `(n, max)` for a prunable model at length `n`: a softmax over `n` keys keeps the
    /// reciprocal's range of `max` keys, so its code is the same at every length.
    pub key_len: Option<(usize, usize)>,
}

impl Default for NonlinearOptions {
    fn default() -> Self {
        NonlinearOptions {
            mask_value: -64.0,
            var_range: (1.0 / 1024.0, 4096.0),
            mode: Mode::Exact,
            ranges: BTreeMap::new(),
            margin: 1.5,
            rel: 1.0 / 1024.0,
            key_len: None,
        }
    }
}

impl NonlinearOptions {
    /// The widened calibrated range of the site keyed `node` ([`crate::ir::Provenance::key`]:
    /// a generation program's windows share the model's ranges), or why there is none.
    fn range(&self, node: &str, what: &'static str) -> Result<(f64, f64), NonlinearError> {
        let &(lo, hi) = self
            .ranges
            .get(node)
            .ok_or_else(|| NonlinearError::NoRange { what, node: node.to_string() })?;
        Ok((lo / self.margin, hi * self.margin))
    }

    /// The widened positive range of `node`'s argument, refusing a non-positive one.
    fn positive(&self, node: &str, what: &'static str) -> Result<(f64, f64), NonlinearError> {
        let (lo, hi) = self.range(node, what)?;
        if lo.is_nan() || lo <= 0.0 {
            let seen = lo * self.margin;
            return Err(NonlinearError::NotPositive { what, node: node.to_string(), seen });
        }
        Ok((lo, hi.max(lo * 1.0001)))
    }
}

/// Why a nonlinear operator could not be lowered: names the node (or its calibration key).
#[derive(Debug, thiserror::Error)]
pub enum NonlinearError {
    /// `--nonlinear smu` without a calibrated range for a site.
    #[error(
        "{what} `{node}` has no calibrated range: --nonlinear smu needs one for every inverse \
         square root (run `veil calibrate` with the same model and flags)"
    )]
    NoRange {
        /// The kind of site ("layer norm", "SMU-1", ...).
        what: &'static str,
        /// The site's calibration key.
        node: String,
    },
    /// A calibrated range reaching zero or below where a positive argument is needed.
    #[error(
        "{what} `{node}`: calibration saw {seen} ≤ 0, but the comparison-free inverse square \
         root needs a positive argument"
    )]
    NotPositive {
        /// The kind of site.
        what: &'static str,
        /// The site's calibration key.
        node: String,
        /// The smallest value calibration saw.
        seen: f64,
    },
    /// A node the rewrite of a division or clip adds does not fit its arguments (a bug).
    #[error("rewriting `{node}`: {error}")]
    Shape {
        /// The node.
        node: String,
        /// The shape error.
        error: crate::ir::shape::ShapeError,
    },
    /// A layer norm over more than the last axis.
    #[error("layer norm `{node}` normalises more than the last axis; only the last is supported")]
    LayerNormAxis {
        /// The node.
        node: String,
    },
    /// The stdlib function did not instantiate for the node.
    #[error("instantiating `{func}` for `{node}`: {error}")]
    Instantiate {
        /// The stdlib function.
        func: &'static str,
        /// The node.
        node: String,
        /// The DSL's error.
        error: crate::dsl::DslError,
    },
}

/// A loader with every stdlib module imported.
pub fn stdlib_loader() -> Loader {
    let mut l = crate::dsl::stdlib_loader();
    let imports: String =
        veil_stdlib::MODULES.iter().map(|(n, _)| format!("import {n};\n")).collect();
    l.load_source("<stdlib>", imports).expect("the stdlib parses");
    l
}

/// Rewrites every shared softmax, layer norm, GELU and SMU-1 into stdlib approximations.
/// Returns the replacements made and the constants clamped.
pub fn lower_nonlinear(
    g: &mut Graph,
    part: &Partition,
    opts: &NonlinearOptions,
) -> Result<(Vec<Approximation>, Vec<String>), NonlinearError> {
    let lib = stdlib_loader();
    let clamped = clamp_masks(g, opts.mask_value);
    let mut done = Vec::new();
    if opts.mode == Mode::Exact {
        divisions_by_secrets(g, part, &lib, &mut done)?;
    }
    let order = g.order.clone();
    for n in order {
        let nd = g.nodes[n].clone();
        if vis_of(part, nd.result, g) != Vis::Shared {
            continue;
        }
        // Nodes made for this one inherit its provenance; the expansion's own, its site.
        g.cursor = nd.prov.clone();
        let smu = opts.mode == Mode::Smu;
        let (func, args, named): Call = match &nd.op {
            Op::LayerNorm { .. } | Op::Smu1 { .. } | Op::Reciprocal | Op::Sqrt if smu => {
                smu_site(g, &nd, opts)?
            }
            // No range is known: the octave functions take any positive value.
            Op::Reciprocal => ("recip_octave", vec![nd.args[0]], vec![]),
            Op::Sqrt => ("sqrt_octave", vec![nd.args[0]], vec![]),
            Op::Softmax { axis } => {
                let ty = g.ty(nd.args[0]);
                let rank = ty.rank();
                let mut named = vec![("axis", Val::Num(*axis as f64 - rank as f64))];
                if let Some((n, max)) = opts.key_len {
                    if ty.shape[*axis] == n {
                        named.push(("pad", Val::Num((max - n) as f64)));
                    }
                }
                ("softmax_max", vec![nd.args[0]], named)
            }
            Op::LayerNorm { axis, eps } => {
                let args = layer_norm_args(g, &nd, *axis)?;
                (
                    "layernorm_poly",
                    args,
                    vec![
                        ("eps", Val::Num(*eps as f64)),
                        ("lo", Val::Num(opts.var_range.0)),
                        ("hi", Val::Num(opts.var_range.1)),
                    ],
                )
            }
            Op::Sigmoid => ("sigmoid_exp", vec![nd.args[0]], vec![]),
            Op::Tanh => ("tanh_exp", vec![nd.args[0]], vec![]),
            Op::Gelu { approx: GeluApprox::Erf } => ("gelu_erf_poly", vec![nd.args[0]], vec![]),
            Op::Gelu { approx: GeluApprox::Tanh } => ("gelu_tanh_poly", vec![nd.args[0]], vec![]),
            Op::Smu1 { alpha, mu } => (
                "smu1_newton",
                vec![nd.args[0]],
                vec![("alpha", Val::Num(*alpha as f64)), ("mu", Val::Num(*mu as f64))],
            ),
            _ => continue,
        };
        // Expanded nodes are named `<node>::<function>/...` so the cost report attributes
        // them to the operator they implement.
        let prefix = format!("{}::{}", nd.name, op_kind(&nd.op));
        g.cursor = nd.prov.at_site(op_kind(&nd.op));
        let before = g.order.len();
        let out = instantiate(&lib, func, g, &args, &named, &prefix)
            .map_err(|error| NonlinearError::Instantiate { func, node: nd.name.clone(), error })?;
        // Move the new nodes to where the replaced node was, so execution order stays valid.
        g.move_before(before, n);
        g.take_place(nd.result, out);
        done.push(Approximation {
            node: nd.name.clone(),
            op: nd.op.to_string(),
            with: format!("stdlib {func}"),
        });
    }
    g.cursor = Default::default();
    g.remove_dead_nodes();
    Ok((done, clamped))
}

/// Who sees `v`: the partition's answer, or for a value made since it was computed, public when
/// it is a constant and shared otherwise.
fn vis_of(part: &Partition, v: Value, g: &Graph) -> Vis {
    part.vis.get(v).copied().unwrap_or_else(|| {
        if g.const_data(v).is_some() {
            Vis::Public
        } else {
            Vis::Shared
        }
    })
}

/// Instantiates stdlib `func` on `args` for node `n`, the new nodes placed just before `n`.
fn expand_before(
    g: &mut Graph,
    lib: &Loader,
    n: crate::ir::Node,
    func: &'static str,
    args: &[Value],
) -> Result<Value, NonlinearError> {
    let nd = g.nodes[n].clone();
    let prefix = format!("{}::{}", nd.name, op_kind(&nd.op));
    g.cursor = nd.prov.at_site(op_kind(&nd.op));
    let before = g.order.len();
    let out = instantiate(lib, func, g, args, &[], &prefix)
        .map_err(|error| NonlinearError::Instantiate { func, node: nd.name.clone(), error })?;
    g.move_before(before, n);
    g.cursor = Default::default();
    Ok(out)
}

/// Below this, `max(s, eps²)` and `s` differ only under every fixed-point resolution veil
/// compiles for, and the octave functions return 0 at 0 anyway (the limit `F.normalize`'s
/// clip guards against).
const NEGLIGIBLE_SQUARE: f64 = 1e-12;

/// `a / d` with `d` secret as `a · recip_octave(d)`, and `a / √s` (also behind an `Expand`
/// to the quotient's shape, or a `Clip` at a negligible minimum, as `F.normalize` exports) as
/// `a · rsqrt_octave(s)`: one octave normalisation per row instead of a square root and a
/// reciprocal per element. `1/√s` (`torch.rsqrt`, as RMSNorm exports: Sqrt → Reciprocal)
/// becomes `rsqrt_octave(s)` too.
fn divisions_by_secrets(
    g: &mut Graph,
    part: &Partition,
    lib: &Loader,
    done: &mut Vec<Approximation>,
) -> Result<(), NonlinearError> {
    for n in g.order.clone() {
        let nd = g.nodes[n].clone();
        if matches!(nd.op, Op::Reciprocal) && vis_of(part, nd.result, g) == Vis::Shared {
            let Some(p) = g.producer(nd.args[0]) else { continue };
            if !matches!(g.nodes[p].op, Op::Sqrt) {
                continue;
            }
            let s = g.nodes[p].args[0];
            let r = expand_before(g, lib, n, "rsqrt_octave", &[s])?;
            g.take_place(nd.result, r);
            done.push(Approximation {
                node: nd.name.clone(),
                op: nd.op.to_string(),
                with: "stdlib rsqrt_octave".to_string(),
            });
            continue;
        }
        if !matches!(nd.op, Op::Div)
            || vis_of(part, nd.result, g) != Vis::Shared
            || vis_of(part, nd.args[1], g) != Vis::Shared
            || !g.ty(nd.args[1]).dtype.is_float()
        {
            continue;
        }
        let out_shape = g.ty(nd.result).shape.clone();
        let a_shape = g.ty(nd.args[0]).shape.clone();
        let op_of = |g: &Graph, v: Value| g.producer(v).map(|p| (g.nodes[p].op.clone(), p));
        let mut d = nd.args[1];
        // The product broadcasts anyway: the reciprocal is computed before the `Expand`.
        if let Some((Op::Expand { .. }, p)) = op_of(g, d) {
            let inner = g.nodes[p].args[0];
            if crate::ir::shape::broadcast(&a_shape, &g.ty(inner).shape) == Some(out_shape.clone())
            {
                d = inner;
            }
        }
        // The clip `F.normalize` puts on the norm, as the import wrote it or as
        // `expand_secret_ops` rewrote it (`max(·, eps)`).
        let negligible = |m: f64| m >= 0.0 && m * m <= NEGLIGIBLE_SQUARE;
        let mut root = d;
        match op_of(g, d) {
            Some((Op::Clip { min, max }, p)) if max == f64::INFINITY && negligible(min) => {
                root = g.nodes[p].args[0];
            }
            Some((Op::Max, p)) => {
                let [x, c] = [g.nodes[p].args[0], g.nodes[p].args[1]];
                let eps = g.const_data(c).filter(|t| t.numel() == 1).map(|t| t.get_f64(0));
                if eps.is_some_and(negligible) {
                    root = x;
                }
            }
            _ => {}
        }
        let (func, arg) = match op_of(g, root) {
            Some((Op::Sqrt, p)) => ("rsqrt_octave", g.nodes[p].args[0]),
            _ => ("recip_octave", d),
        };
        let r = expand_before(g, lib, n, func, &[arg])?;
        let node = &mut g.nodes[n];
        node.op = Op::Mul;
        node.args[1] = r;
        done.push(Approximation {
            node: nd.name.clone(),
            op: nd.op.to_string(),
            with: format!("stdlib {func}"),
        });
    }
    g.remove_dead_nodes();
    Ok(())
}

/// A layer norm's `x, scale, bias` (a zero bias when it has none), refusing one that does not
/// normalise exactly the last axis.
fn layer_norm_args(
    g: &mut Graph,
    nd: &crate::ir::NodeData,
    axis: usize,
) -> Result<Vec<Value>, NonlinearError> {
    if axis + 1 != g.ty(nd.args[0]).rank() {
        return Err(NonlinearError::LayerNormAxis { node: nd.name.clone() });
    }
    let bias = match nd.args.get(2) {
        Some(&b) => b,
        None => {
            let shape = g.ty(nd.args[1]).shape.clone();
            let n = shape.iter().product();
            g.add_const(&format!("{}.zero_bias", nd.name), Tensor::f32(shape, vec![0.0; n]))
        }
    };
    Ok(vec![nd.args[0], nd.args[1], bias])
}

/// A stdlib call: function, tensor arguments, named knobs.
type Call = (&'static str, Vec<Value>, Vec<(&'static str, Val)>);

/// The `--nonlinear smu` lowering of one site.
fn smu_site(
    g: &mut Graph,
    nd: &crate::ir::NodeData,
    opts: &NonlinearOptions,
) -> Result<Call, NonlinearError> {
    let rel = ("rel", Val::Num(opts.rel));
    Ok(match &nd.op {
        Op::LayerNorm { axis, eps } => {
            let args = layer_norm_args(g, nd, *axis)?;
            let (lo, hi) = opts.positive(&nd.prov.key(&nd.name), "layer norm")?;
            (
                "layernorm_fit",
                args,
                vec![
                    ("eps", Val::Num(*eps as f64)),
                    ("lo", Val::Num(lo)),
                    ("hi", Val::Num(hi)),
                    rel,
                ],
            )
        }
        Op::Smu1 { alpha, mu } => {
            let (lo, hi) = opts.range(&nd.prov.key(&nd.name), "SMU-1")?;
            // |x| ≤ m, kept off 0 so that the rsqrt range [μ², ((1−α)m)² + μ²] is not empty.
            let m = (lo.abs().max(hi.abs())).max(1e-2 * (*mu as f64).abs().max(1e-3));
            (
                "smu1_fit",
                vec![nd.args[0]],
                vec![
                    ("alpha", Val::Num(*alpha as f64)),
                    ("mu", Val::Num(*mu as f64)),
                    ("m", Val::Num(m)),
                    rel,
                ],
            )
        }
        Op::Reciprocal => {
            let (lo, hi) = opts.positive(&nd.prov.key(&nd.name), "reciprocal")?;
            ("recip_fit", vec![nd.args[0]], vec![("lo", Val::Num(lo)), ("hi", Val::Num(hi)), rel])
        }
        Op::Sqrt => {
            let (lo, hi) = opts.positive(&nd.prov.key(&nd.name), "square root")?;
            ("sqrt_fit", vec![nd.args[0]], vec![("lo", Val::Num(lo)), ("hi", Val::Num(hi)), rel])
        }
        _ => unreachable!("only called for the four site kinds"),
    })
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Softmax { .. } => "softmax",
        Op::LayerNorm { .. } => "layernorm",
        Op::Gelu { .. } => "gelu",
        Op::Smu1 { .. } => "smu1",
        Op::Reciprocal => "reciprocal",
        Op::Sqrt => "sqrt",
        Op::Sigmoid => "sigmoid",
        Op::Tanh => "tanh",
        Op::Div => "div",
        _ => "nonlinear",
    }
}

/// `x` with a huge negative additive-mask entry (≤ −1e9, e.g. the −3.4028235e38 HF exports
/// add) replaced by the finite `value`: the one rule for constants and for client feeds.
pub fn clamp_mask_entry(x: f32, value: f32) -> f32 {
    if x <= -1e9 {
        value
    } else {
        x
    }
}

/// Replaces huge negative float constants (additive attention masks such as −3.4028235e38,
/// the f32 minimum HF exports add) with `value`: fixed point cannot hold them, and any value
/// far enough below the scores gives the same softmax. Returns the constants changed.
pub fn clamp_masks(g: &mut Graph, value: f32) -> Vec<String> {
    let mut changed = Vec::new();
    for v in g.consts() {
        let Some(t) = g.const_data(v) else { continue };
        let Some(data) = t.as_f32() else { continue };
        if data.iter().any(|&x| x <= -1e9) {
            let fixed: Vec<f32> = data.iter().map(|&x| clamp_mask_entry(x, value)).collect();
            let nt = Tensor::f32(t.shape.clone(), fixed);
            let name = g.values[v].name.clone();
            g.values[v].def = crate::ir::ValueDef::Const(std::sync::Arc::new(nt));
            changed.push(name);
        }
    }
    changed
}
