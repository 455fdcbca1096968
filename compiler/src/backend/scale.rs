//! The fixed-point scale policy: for each kind of operation on secret data, the scale (number
//! of fractional bits) its operands are brought to, and so where truncation happens, and the
//! scale of its result. The bytecode lowering (`backend::lower`) emits these moves as
//! instructions and the fixed-point simulator (`crate::fixed`) applies them to ring values;
//! both ask [`Policy`], so the simulator measures the truncations the compiled program makes.
//!
//! Moving an operand from scale `s` to `t` truncates by `s − t` bits when `t < s` (a
//! probabilistic truncation in the VM, floor in the simulator) and shifts left exactly when
//! `t > s`. Truncation is lazy: a product carries the sum of its operands' scales and is
//! truncated only when a consumer needs fewer bits. The rules with no choice in them are not
//! written out here: negation, sums and differences with a public constant (the constant is
//! encoded at the value's scale), reductions by summation, data movement (reshape, transpose,
//! slice, expand, gather, compaction) and casts keep their operand's scale; comparison bits
//! become 0/1 ring values at scale 0.

/// The policy at `f` fractional bits, the program's scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The program's fractional bits.
    pub f: u8,
}

impl Policy {
    /// Scale of a client input or server weight: `f` for floats, 0 (the integer itself) for
    /// integer data.
    pub fn boundary(&self, is_float: bool) -> u8 {
        if is_float {
            self.f
        } else {
            0
        }
    }

    /// Scale of a sum, difference or concatenation of secrets: the widest operand's, the others
    /// shifted up exactly (truncating would lose the wider operand's bits for nothing).
    pub fn aligned(&self, a: u8, b: u8) -> u8 {
        a.max(b)
    }

    /// Scale at which a masked opening hands its value to an elementwise product, a selection
    /// or a ReLU: at most `f`, the truncation folded into the opening for free.
    pub fn opened(&self, s: u8) -> u8 {
        s.min(self.f)
    }

    /// Scale of an elementwise product (or square) of two secrets at `sx` and `sy`: each is
    /// opened ([`Policy::opened`]) and the product keeps both scales.
    pub fn product(&self, sx: u8, sy: u8) -> u8 {
        self.opened(sx) + self.opened(sy)
    }

    /// Scale a secret is truncated to before a comparison (a row maximum, the maximum of two
    /// secrets, pruning's scores): at most `f`, so the compared range fits the protocol.
    pub fn compared(&self, s: u8) -> u8 {
        s.min(self.f)
    }

    /// Scale of a secret multiplied locally by a public tensor (elementwise or as a matrix):
    /// truncated to `f` when it carries more than `2f`, so the product stays at most `3f`.
    pub fn before_public_product(&self, s: u8) -> u8 {
        if s > 2 * self.f {
            self.f
        } else {
            s
        }
    }

    /// Scale a public tensor factor of an elementwise product is encoded at: 0 when every
    /// entry is an integer (the product is exact and keeps the secret's scale), else `f`.
    /// A public matrix factor is always encoded at `f`.
    pub fn public_factor(&self, integral: bool) -> u8 {
        if integral {
            0
        } else {
            self.f
        }
    }

    /// Scale a share is brought to before a product with a server weight (elementwise or as a
    /// matrix): exactly `f`, the scale the constant-operand protocol expects; the product
    /// carries `f` plus the weight's scale.
    pub fn before_weight_product(&self) -> u8 {
        self.f
    }

    /// The scale the left operand `x` (at `sx`) of a matrix product of two secrets is brought
    /// to, if any, when the right operand's widest block is at `ymax`: `f` when the product
    /// would exceed `3f` and `x` is the wider operand.
    pub fn matmul_left(&self, sx: u8, ymax: u8) -> Option<u8> {
        (sx + ymax > 3 * self.f && sx >= ymax).then_some(self.f)
    }

    /// The scale a block of the right operand (at `sy`) of a matrix product of two secrets is
    /// brought to, if any, the left operand being at `sx` after [`Policy::matmul_left`]: `f`
    /// when the product would still exceed `3f`. The product carries the sum of the scales.
    pub fn matmul_right(&self, sx: u8, sy: u8) -> Option<u8> {
        (sx + sy > 3 * self.f).then_some(self.f)
    }

    /// What multiplying a value at `scale` bits by the public scalar `c` becomes.
    pub fn scalar_product(&self, scale: u8, c: f64) -> ScalarProduct {
        let f = self.f;
        let up = c.abs().log2();
        if up.fract() == 0.0 && up >= 1.0 && scale > 2 * f && scale as f64 >= 2.0 * f as f64 + up {
            return ScalarProduct::Unlabel { k: up as u8, negate: c < 0.0 };
        }
        if c.fract() == 0.0 && c.abs() < (1u64 << 20) as f64 {
            return ScalarProduct::Integer(c as i64);
        }
        let k = -c.abs().log2();
        if k.fract() == 0.0 && (1.0..=16.0).contains(&k) {
            let (k, negate) = (k as u8, c < 0.0);
            if scale as u32 + k as u32 <= 3 * f as u32 {
                return ScalarProduct::Relabel { k, negate };
            }
            return ScalarProduct::RelabelTruncated { k, negate };
        }
        ScalarProduct::Encoded { truncate_first: scale > 2 * f }
    }
}

/// The factor a division by the public `c` multiplies by: its reciprocal rounded to `f32`, the
/// precision of the graph's constants.
pub fn divisor_reciprocal(c: f64) -> f32 {
    (1.0 / c) as f32
}

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
    /// `±2^-k` on a value already above `3f` bits: relabelled with `k` more fractional bits and
    /// truncated to `f` in one opening (where truncating to `f` and then multiplying by the
    /// encoded factor would need a second truncation later: attention's `QKᵀ·2^-3`).
    RelabelTruncated {
        /// Extra fractional bits.
        k: u8,
        /// The factor is negative.
        negate: bool,
    },
    /// `±2^k` on a value above `2f` fractional bits that keeps at least `2f`: the same ring
    /// element read with `k` fewer (negated for `-`). Exact like an integer product, and it
    /// cannot overflow where the product could: a value above `2f` has 16 or fewer integer bits
    /// left (a layer norm's variance at `3f`, lifted by `4^k` before its comparisons).
    Unlabel {
        /// Fractional bits given up.
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

#[cfg(test)]
mod tests {
    use super::{Policy, ScalarProduct};

    #[test]
    fn a_power_of_two_rides_on_the_truncation_a_wide_value_needs() {
        let p = Policy { f: 16 };
        // QKᵀ at 2f: relabelled for free.
        assert_eq!(p.scalar_product(32, 0.125), ScalarProduct::Relabel { k: 3, negate: false });
        // At 3f it would exceed 3f: relabelled and truncated to f in one opening.
        assert_eq!(
            p.scalar_product(48, -0.125),
            ScalarProduct::RelabelTruncated { k: 3, negate: true }
        );
        // A power of two above 1 on a value above 2f that keeps 2f: fewer fractional bits, the
        // same ring element; otherwise an integer product.
        assert_eq!(p.scalar_product(48, 64.0), ScalarProduct::Unlabel { k: 6, negate: false });
        assert_eq!(p.scalar_product(40, -64.0), ScalarProduct::Unlabel { k: 6, negate: true });
        assert_eq!(p.scalar_product(37, 64.0), ScalarProduct::Integer(64));
        assert_eq!(p.scalar_product(32, 4.0), ScalarProduct::Integer(4));
        // Any other factor is a product, after truncating a value above 2f.
        assert_eq!(p.scalar_product(48, 0.1), ScalarProduct::Encoded { truncate_first: true });
    }
}
