//! veil's stdlib: the MPC approximations of nonlinear functions, written in the DSL
//! (`dsl/*.veil`), with the float reference and the domain of each, so that their accuracy is
//! measured and tabulated (`stdlib/README.md`) rather than asserted.
//!
//! Pure data: no dependency on the compiler or the VM.
#![deny(missing_docs)]

/// The source of each stdlib module, by import name.
pub const MODULES: &[(&str, &str)] = &[
    ("exp", include_str!("../dsl/exp.veil")),
    ("reciprocal", include_str!("../dsl/reciprocal.veil")),
    ("rsqrt", include_str!("../dsl/rsqrt.veil")),
    ("gelu", include_str!("../dsl/gelu.veil")),
    ("softmax", include_str!("../dsl/softmax.veil")),
    ("layernorm", include_str!("../dsl/layernorm.veil")),
    ("smu", include_str!("../dsl/smu.veil")),
    ("octave", include_str!("../dsl/octave.veil")),
    ("sigmoid", include_str!("../dsl/sigmoid.veil")),
];

/// The source of module `name` (for `import name;`).
pub fn module(name: &str) -> Option<&'static str> {
    MODULES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// How a stdlib function is applied when measuring it.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Shape {
    /// Elementwise on a vector.
    Elementwise,
    /// Along the last axis of rows of the given length.
    Rows(usize),
}

/// A stdlib function with what is needed to measure it.
#[derive(Copy, Clone, Debug)]
pub struct StdFn {
    /// Module (import name).
    pub module: &'static str,
    /// Function name.
    pub name: &'static str,
    /// How it is called when measured: a DSL expression in the input `x`.
    pub call: &'static str,
    /// Domain swept for the error table.
    pub domain: (f64, f64),
    /// Sample logarithmically (for positive domains spanning octaves).
    pub log_sweep: bool,
    /// Elementwise or per row.
    pub shape: Shape,
    /// The float function it approximates (applied per element, or per row).
    pub reference: fn(&[f64]) -> Vec<f64>,
}

fn each(x: &[f64], f: impl Fn(f64) -> f64) -> Vec<f64> {
    x.iter().map(|&v| f(v)).collect()
}

/// erf, to double precision (Abramowitz–Stegun 7.1.26 is too coarse for a reference; this
/// is the W. J. Cody rational approximation via erfc's continued fraction split).
pub fn erf(x: f64) -> f64 {
    // Series for small |x|, continued fraction for large |x|.
    let a = x.abs();
    let r = if a < 2.5 {
        let mut sum = a;
        let mut term = a;
        let x2 = a * a;
        for n in 1..200 {
            let n = n as f64;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc(a) = exp(-a²)/(a√π) · 1/(1 + 1/(2a²)/(1 + 2/(2a²)/(1 + ...)))
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64) / (2.0 * a * a) / (1.0 + f);
        }
        1.0 - (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) / (1.0 + f)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

fn smu1(x: f64) -> f64 {
    (x + (x * x + 1.0).sqrt()) / 2.0
}

fn smu(x: f64) -> f64 {
    let mu = std::f64::consts::FRAC_1_SQRT_2;
    (x + x * erf(mu * x)) / 2.0
}

/// `f` applied to each row of `n` entries of `x`.
fn per_row(x: &[f64], n: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    x.chunks(n).flat_map(f).collect()
}

/// `e` divided by its sum.
fn normalised(e: Vec<f64>) -> Vec<f64> {
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn smu1_softmax_rows(x: &[f64], n: usize) -> Vec<f64> {
    per_row(x, n, |r| normalised(r.iter().map(|&v| smu1(v)).collect()))
}

fn softmax_rows(x: &[f64], n: usize) -> Vec<f64> {
    per_row(x, n, |r| {
        let m = r.iter().cloned().fold(f64::MIN, f64::max);
        normalised(r.iter().map(|v| (v - m).exp()).collect())
    })
}

fn layernorm_rows(x: &[f64], n: usize) -> Vec<f64> {
    per_row(x, n, |r| {
        let m = r.iter().sum::<f64>() / r.len() as f64;
        let v = r.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / r.len() as f64;
        let s = 1.0 / (v + 1e-5).sqrt();
        r.iter().map(|a| (a - m) * s).collect()
    })
}

/// The octave functions' swept domain: the smallest positive value at 16 fractional bits to
/// just below the comparisons' range (2^19).
const OCTAVE_LO: f64 = 1.0 / 65536.0;
/// See [`OCTAVE_LO`].
const OCTAVE_HI: f64 = 524000.0;

/// Row length used when measuring row functions.
pub const ROW: usize = 128;

/// Every function in the table.
pub const ALL: &[StdFn] = &[
    StdFn {
        module: "exp",
        name: "exp_neg",
        call: "exp_neg(x)",
        domain: (-16.0, 0.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, f64::exp),
    },
    StdFn {
        module: "sigmoid",
        name: "sigmoid_exp",
        call: "sigmoid_exp(x)",
        domain: (-24.0, 24.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / (1.0 + (-v).exp())),
    },
    StdFn {
        module: "sigmoid",
        name: "tanh_exp",
        call: "tanh_exp(x)",
        domain: (-12.0, 12.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, f64::tanh),
    },
    StdFn {
        module: "reciprocal",
        name: "recip_newton",
        call: "recip_newton(x)",
        domain: (1.0, 128.0),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v),
    },
    StdFn {
        module: "rsqrt",
        name: "rsqrt_newton",
        call: "rsqrt_newton(x)",
        domain: (0.0009765625, 4096.0),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v.sqrt()),
    },
    StdFn {
        module: "rsqrt",
        name: "rsqrt_poly",
        call: "rsqrt_poly(x)",
        domain: (0.0009765625, 4096.0),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v.sqrt()),
    },
    StdFn {
        module: "rsqrt",
        name: "sqrt_newton",
        call: "sqrt_newton(x)",
        domain: (0.0009765625, 4096.0),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, f64::sqrt),
    },
    StdFn {
        module: "rsqrt",
        name: "rsqrt_fit",
        call: "rsqrt_fit(x, 1.0, 64.0)",
        domain: (1.0, 64.0),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v.sqrt()),
    },
    StdFn {
        module: "rsqrt",
        name: "rsqrt_fit",
        call: "rsqrt_fit(x, 0.0625, 256.0)",
        domain: (0.0625, 256.0),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v.sqrt()),
    },
    StdFn {
        module: "rsqrt",
        name: "recip_fit",
        call: "recip_fit(x, 4.0, 1024.0)",
        domain: (4.0, 1024.0),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v),
    },
    StdFn {
        module: "octave",
        name: "rsqrt_octave",
        call: "rsqrt_octave(x)",
        domain: (OCTAVE_LO, OCTAVE_HI),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v.sqrt()),
    },
    StdFn {
        module: "octave",
        name: "sqrt_octave",
        call: "sqrt_octave(x)",
        domain: (OCTAVE_LO, OCTAVE_HI),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, f64::sqrt),
    },
    StdFn {
        module: "octave",
        name: "recip_octave",
        call: "recip_octave(x)",
        domain: (OCTAVE_LO, OCTAVE_HI),
        log_sweep: true,
        shape: Shape::Elementwise,
        reference: |x| each(x, |v| 1.0 / v),
    },
    StdFn {
        module: "gelu",
        name: "gelu_erf_poly",
        call: "gelu_erf_poly(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, gelu),
    },
    StdFn {
        module: "gelu",
        name: "gelu_tanh_poly",
        call: "gelu_tanh_poly(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, gelu_tanh),
    },
    StdFn {
        module: "smu",
        name: "smu1_newton",
        call: "smu1_newton(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, smu1),
    },
    StdFn {
        module: "smu",
        name: "smu1_fit",
        call: "smu1_fit(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, smu1),
    },
    StdFn {
        module: "smu",
        name: "smu_poly",
        call: "smu_poly(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Elementwise,
        reference: |x| each(x, smu),
    },
    StdFn {
        module: "softmax",
        name: "softmax_max",
        call: "softmax_max(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Rows(ROW),
        reference: |x| softmax_rows(x, ROW),
    },
    StdFn {
        module: "smu",
        name: "softmax_smu",
        call: "softmax_smu(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Rows(ROW),
        reference: |x| smu1_softmax_rows(x, ROW),
    },
    StdFn {
        module: "smu",
        name: "softmax_smu_fit",
        call: "softmax_smu_fit(x)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Rows(ROW),
        reference: |x| smu1_softmax_rows(x, ROW),
    },
    StdFn {
        module: "layernorm",
        name: "layernorm_poly",
        call: "layernorm_poly(x, 1.0, 0.0)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Rows(ROW),
        reference: |x| layernorm_rows(x, ROW),
    },
    StdFn {
        module: "layernorm",
        name: "layernorm_fit",
        call: "layernorm_fit(x, 1.0, 0.0, 0.00001, 0.0625, 32.0)",
        domain: (-8.0, 8.0),
        log_sweep: false,
        shape: Shape::Rows(ROW),
        reference: |x| layernorm_rows(x, ROW),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_reference_is_accurate() {
        assert_eq!(erf(0.0), 0.0);
        // Known values.
        for (x, want) in [
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
        ] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-14);
        }
    }

    #[test]
    fn every_listed_function_has_a_module() {
        for f in ALL {
            let src = module(f.module).expect("module exists");
            assert!(src.contains(&format!("fn {}(", f.name)), "{} not in {}", f.name, f.module);
        }
    }
}
