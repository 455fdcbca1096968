//! The leakage check, run on every compile: whatever the partition decided, the client's file
//! must hold public data only, the program may reveal to the client only the model's declared
//! outputs, and the server may receive nothing of the client's in the clear (its program inputs
//! are the server's own weights). A violation is a compiler bug or a wrong visibility
//! declaration; the compile stops with the offending value named rather than write a leaky
//! artifact.

use crate::ir::{Graph, Tensor, ValueDef};
use std::collections::HashSet;
use veil_isa::{Party, Program, Reveals};

/// A private tensor is searched for in another layout or scaled only when it has at least
/// this many distinct values: one of few values (a layer norm's ones before training) is no
/// secret, and would match constants of the model.
const MIN_DISTINCT: usize = 8;

/// A larger tensor contains a private one when it holds the start of the private one's first
/// row, this many values (or the whole row if shorter, at least 4), in order: what a
/// concatenation along any axis keeps.
const RUN: usize = 8;

/// The run of `t`'s values a larger tensor holding `t` must contain, if telling enough.
fn telling_run<T: PartialEq + Copy>(values: &[T], shape: &[usize]) -> Option<Vec<T>> {
    let row = shape.last().copied().unwrap_or(1).min(RUN).min(values.len());
    let run = &values[..row];
    let distinct = run.iter().enumerate().filter(|(i, x)| !run[..*i].contains(x)).count();
    (row >= 4 && distinct >= 4).then(|| run.to_vec())
}

/// Which of `needles` occurs as a contiguous run in `hay`: one scan, with a direct-mapped
/// filter on each run's first word (the haystacks are whole weight matrices).
fn find_runs(hay: &[u64], needles: &[(usize, &[u64])]) -> Option<usize> {
    const BITS: u32 = 16;
    let slot = |x: u64| (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as usize;
    let mut table = vec![false; 1 << BITS];
    for (_, n) in needles {
        table[slot(n[0])] = true;
    }
    for i in 0..hay.len() {
        if table[slot(hay[i])] {
            if let Some((k, _)) = needles.iter().find(|(_, n)| hay[i..].starts_with(n)) {
                return Some(*k);
            }
        }
    }
    None
}

/// Invariants of a tensor's values under a change of layout, and of their ratio under scaling.
#[derive(Clone, Copy)]
struct Moments {
    n: usize,
    mean: f64,
    rms: f64,
    max_abs: f64,
}

impl Moments {
    fn of(v: &[f64]) -> Moments {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let rms = (v.iter().map(|x| x * x).sum::<f64>() / n).sqrt();
        Moments { n: v.len(), mean, rms, max_abs: v.iter().fold(0f64, |m, x| m.max(x.abs())) }
    }

    /// Whether `t` may be `c·s` for some `c` (then worth the exact check).
    fn may_scale_to(&self, t: &Moments, integral: bool) -> bool {
        if self.n != t.n || self.rms == 0.0 || t.rms == 0.0 {
            return false;
        }
        let c = t.rms / self.rms;
        let slack = 1e-3 * t.max_abs + if integral { 1.0 } else { 0.0 };
        (t.max_abs - c * self.max_abs).abs() <= slack
            && (t.mean.abs() - c * self.mean.abs()).abs() <= slack
    }
}

/// `b ≈ c·a` elementwise for sorted `a` and `b` and some factor `c ≠ 0` (either sign), within
/// f32 rounding or, for integers, half a unit (a fixed-point encoding): the factor.
fn scaled(a: &[f64], b: &[f64], integral: bool) -> Option<f64> {
    let n = a.len();
    if n < 2 || n != b.len() || a[n - 1] == a[0] {
        return None;
    }
    let bmax = b[0].abs().max(b[n - 1].abs());
    let tol = 1e-5 * bmax + if integral { 0.5 } else { 0.0 };
    for sign in [1.0, -1.0] {
        let c = sign * (b[n - 1] - b[0]) / (a[n - 1] - a[0]);
        if c == 0.0 || !c.is_finite() {
            continue;
        }
        let at = |i: usize| if sign > 0.0 { a[i] } else { a[n - 1 - i] };
        if (0..n).all(|i| (b[i] - c * at(i)).abs() <= tol) {
            return Some(c);
        }
    }
    None
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// What would leak a secret, naming the value, constant or weight.
#[derive(Debug, thiserror::Error)]
pub enum LeakError {
    /// The client's part holds a private weight's values.
    #[error(
        "the client's part would contain `{value}`, which {how} the private weight `{weight}`"
    )]
    ClientPart {
        /// The client's constant.
        value: String,
        /// How it holds the weight ("equals", "contains the values of", ...).
        how: String,
        /// The private weight.
        weight: String,
    },
    /// A program constant recorded as computed from a private weight.
    #[error(
        "constant {buf} is recorded as computed from `{weight}`, which the server keeps private"
    )]
    ConstantFrom {
        /// The constant's buffer.
        buf: veil_isa::Buf,
        /// The private weight.
        weight: String,
    },
    /// A program constant holding a private weight's encoded values.
    #[error(
        "constant {buf} holds the values of the server's private `{weight}` (as the program \
         encodes them): constants reach the client and the dealer"
    )]
    ConstantHolds {
        /// The constant's buffer.
        buf: veil_isa::Buf,
        /// The private weight.
        weight: String,
    },
    /// The program fails the analysis a client or dealer runs (names the instruction).
    #[error(transparent)]
    Verify(#[from] veil_isa::verify::VerifyError),
    /// The program reveals a value that is not a model output.
    #[error("the program would reveal `{output}`, which is not a declared output of the model")]
    NotAnOutput {
        /// The revealed value.
        output: String,
    },
    /// A program input fed by the server.
    #[error("program input `{input}` would come from the server")]
    ServerInput {
        /// The input.
        input: String,
    },
}

/// Checks the client graph's data: every constant must be public. `private` lists every
/// private weight (and server-derived value): a client tensor that equals one, holds its values
/// in another layout (a transpose or reshape), is a scaled or fixed-point-encoded copy of it,
/// or contains it (a concatenation) leaks it. What a wrong visibility marking puts in the
/// client's part is of these forms: the weight itself, or constants folded from it.
pub fn check_client_graph(cg: &Graph, private: &[(String, Tensor)]) -> Result<(), LeakError> {
    let mut client: Vec<(&str, &Tensor)> = Vec::new();
    for (_, vd) in cg.values.iter() {
        if let ValueDef::Const(t) | ValueDef::Weight(t) = &vd.def {
            if t.numel() > 1 {
                client.push((vd.name.as_str(), t));
            }
        }
    }
    let leak = |c: &str, how: &str, w: &str| {
        Err(LeakError::ClientPart { value: c.into(), how: how.into(), weight: w.into() })
    };
    let private: Vec<&(String, Tensor)> = private.iter().filter(|(_, t)| t.numel() > 1).collect();
    let largest = client.iter().map(|(_, t)| t.numel()).max().unwrap_or(0);
    let mut client_moments: Vec<Option<(Vec<f64>, Moments)>> = vec![None; client.len()];
    let mut needles: Vec<(usize, Vec<u64>)> = Vec::new();
    for (k, (name, s)) in private.iter().enumerate() {
        if let Some((c, _)) = client.iter().find(|(_, t)| t.shape == s.shape && *t == s) {
            return leak(c, "equals", name);
        }
        if s.numel() > largest {
            continue;
        }
        let sv = s.to_f64_vec();
        if let Some(run) = telling_run(&sv, &s.shape) {
            needles.push((k, run.iter().map(|x| x.to_bits()).collect()));
        }
        let sm = Moments::of(&sv);
        let mut s_sorted: Option<Vec<f64>> = None;
        for (j, (c, t)) in client.iter().enumerate() {
            if t.numel() != s.numel() {
                continue;
            }
            let (tv, tm) = client_moments[j].get_or_insert_with(|| {
                let v = t.to_f64_vec();
                let m = Moments::of(&v);
                (v, m)
            });
            let integral = !t.dtype.is_float();
            if !sm.may_scale_to(tm, integral) {
                continue;
            }
            let ss = s_sorted.get_or_insert_with(|| sorted(sv.clone()));
            if 1 + ss.windows(2).filter(|w| w[0] != w[1]).count() < MIN_DISTINCT {
                break;
            }
            let ts = sorted(tv.clone());
            if ts == *ss {
                return leak(
                    c,
                    "holds the values, in another layout (transposed or reshaped), of",
                    name,
                );
            }
            if let Some(f) = scaled(ss, &ts, integral) {
                return leak(
                    c,
                    &format!("is a copy scaled by {f:.6e} (or fixed-point encoded) of"),
                    name,
                );
            }
        }
    }
    for (c, t) in &client {
        let bigger: Vec<(usize, &[u64])> = needles
            .iter()
            .filter(|(k, _)| private[*k].1.numel() < t.numel())
            .map(|(k, n)| (*k, n.as_slice()))
            .collect();
        if bigger.is_empty() {
            continue;
        }
        let hay: Vec<u64> = t.to_f64_vec().iter().map(|x| x.to_bits()).collect();
        if let Some(k) = find_runs(&hay, &bigger) {
            return leak(c, "contains the values of", &private[k].0);
        }
    }
    Ok(())
}

/// Checks the program's constants against the server's weights: none is recorded as computed
/// from a weight the server keeps private, and none holds one's values as the program encodes
/// them (fixed point at the program's fractional bits, or integers): in any layout at the same
/// size, or the start of its first row inside a larger constant.
pub fn check_constants(p: &Program, private: &[(String, Tensor)]) -> Result<(), LeakError> {
    let names: HashSet<&str> = private.iter().map(|(n, _)| n.as_str()).collect();
    for (i, c) in p.consts.iter().enumerate() {
        if let veil_isa::ConstOrigin::PublicWeights(from) = p.const_origin(i) {
            if let Some(n) = from.iter().find(|n| names.contains(n.as_str())) {
                return Err(LeakError::ConstantFrom { buf: c.buf, weight: n.clone() });
            }
        }
    }
    let leak = |buf: veil_isa::Buf, name: &str| {
        Err(LeakError::ConstantHolds { buf, weight: name.to_string() })
    };
    let largest = p.consts.iter().map(|c| c.data.len()).max().unwrap_or(0);
    // Sums are invariant under a change of layout: sort only constants that agree.
    let sums = |v: &mut dyn Iterator<Item = i64>| {
        v.fold((0i128, 0i128), |(a, b), x| (a + x as i128, b + (x as i128) * (x as i128)))
    };
    let const_sums: Vec<(i128, i128)> =
        p.consts.iter().map(|c| sums(&mut c.data.iter().map(|&x| x as i64))).collect();
    let mut needles: Vec<(usize, Vec<u64>)> = Vec::new();
    for (k, (name, t)) in private.iter().enumerate() {
        let n = t.numel();
        if n < 2 || n > largest {
            continue;
        }
        let scale = if t.dtype.is_float() { p.frac_bits } else { 0 };
        let enc: Vec<u64> =
            t.to_f64_vec().iter().map(|&x| crate::backend::lower::encode(x, scale)).collect();
        if let Some(run) = telling_run(&enc, &t.shape) {
            needles.push((k, run));
        }
        let es = sums(&mut enc.iter().map(|&x| x as i64));
        let mut e_sorted: Option<Vec<i64>> = None;
        for (c, cs) in p.consts.iter().zip(&const_sums) {
            if c.data.len() != n || *cs != es {
                continue;
            }
            let e = e_sorted.get_or_insert_with(|| {
                let mut v: Vec<i64> = enc.iter().map(|&x| x as i64).collect();
                v.sort_unstable();
                v
            });
            if 1 + e.windows(2).filter(|w| w[0] != w[1]).count() < MIN_DISTINCT {
                break;
            }
            let mut d: Vec<i64> = c.data.iter().map(|&x| x as i64).collect();
            d.sort_unstable();
            if d == *e {
                return leak(c.buf, name);
            }
        }
    }
    for c in &p.consts {
        let bigger: Vec<(usize, &[u64])> = needles
            .iter()
            .filter(|(k, _)| private[*k].1.numel() < c.data.len())
            .map(|(k, n)| (*k, n.as_slice()))
            .collect();
        if let Some(k) = (!bigger.is_empty()).then(|| find_runs(&c.data, &bigger)).flatten() {
            return leak(c.buf, &private[k].0);
        }
    }
    Ok(())
}

/// Checks the program with the same analysis a client or dealer runs before a session
/// ([`veil_isa::verify`]: every opening and message masked by fresh dealer randomness, reveals
/// only of declared outputs and only to the client, the pruning counts, no constant from a
/// private weight), then what only the compiler knows: the revealed outputs are the model's,
/// and the program's inputs come from the client. Returns what the program reveals.
pub fn check_program(p: &Program, model_outputs: &[String]) -> Result<Reveals, LeakError> {
    let reveals = veil_isa::verify(p)?;
    let outs: HashSet<&str> = model_outputs.iter().map(String::as_str).collect();
    for o in &p.outputs {
        if !outs.contains(o.name.as_str()) {
            return Err(LeakError::NotAnOutput { output: o.name.clone() });
        }
    }
    for i in &p.inputs {
        if i.party != Party::Client {
            return Err(LeakError::ServerInput { input: i.name.clone() });
        }
    }
    Ok(reveals)
}
