//! How a fixed-point value meets a public scalar factor: the rule the bytecode lowering uses
//! and the fixed-point simulator mirrors, written once so the two cannot drift.

/// What multiplying a value at `scale` fractional bits by a public scalar becomes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarProduct {
    /// An integer factor: an exact wrapping product, the scale unchanged.
    Integer(i64),
    /// `±2^-k`: the same ring element read with `k` more fractional bits (negated for `-`).
    Relabel {
        /// Extra fractional bits.
        k: u8,
        /// The factor is negative.
        negate: bool,
    },
    /// A product with the factor encoded at `f` bits, after truncating the value to `f` bits
    /// when it carries more than `2f` (so the product stays below `3f`).
    Encoded {
        /// Truncate to `f` bits first.
        truncate_first: bool,
    },
}

/// The rule for `x · c` with `x` at `scale` bits, `f` the program's fractional bits.
pub fn scalar_product(scale: u8, c: f64, f: u8) -> ScalarProduct {
    if c.fract() == 0.0 && c.abs() < (1u64 << 20) as f64 {
        return ScalarProduct::Integer(c as i64);
    }
    let k = -c.abs().log2();
    if k.fract() == 0.0 && (1.0..=16.0).contains(&k) && scale as f64 + k <= 3.0 * f as f64 {
        return ScalarProduct::Relabel { k: k as u8, negate: c < 0.0 };
    }
    ScalarProduct::Encoded { truncate_first: scale > 2 * f }
}
