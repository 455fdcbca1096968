//! The ring Z_2^64 with fixed-point encoding: a real `x` is the wrapping integer
//! `round(x · 2^f)`, negative values in two's complement.

/// Encodes a real with `frac_bits` fractional bits (saturating at the representable range).
pub fn encode(x: f64, frac_bits: u8) -> u64 {
    let scaled = (x * (1u64 << frac_bits) as f64).round();
    let clamped = scaled.clamp(i64::MIN as f64, i64::MAX as f64);
    clamped as i64 as u64
}

/// Decodes a ring element with `frac_bits` fractional bits.
pub fn decode(v: u64, frac_bits: u8) -> f64 {
    v as i64 as f64 / (1u64 << frac_bits) as f64
}

/// Encodes an integer (scale 0).
pub fn encode_int(x: i64) -> u64 {
    x as u64
}

/// True when the real `x` fits the signed ring range at `frac_bits` with `headroom` spare bits
/// (so that sums and the truncation offset of 2^62 cannot overflow).
pub fn fits(x: f64, frac_bits: u8, headroom: u8) -> bool {
    let limit = 2f64.powi(63 - headroom as i32 - frac_bits as i32);
    x.is_finite() && x.abs() < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_signs() {
        for &x in &[0.0, 1.0, -1.0, 3.25, -1234.5678, 1.0 / 65536.0] {
            let e = encode(x, 16);
            assert!((decode(e, 16) - x).abs() <= 0.5 / 65536.0);
        }
        assert_eq!(encode(-1.0, 16), (-65536i64) as u64);
        assert_eq!(decode(encode(-2.5, 16).wrapping_add(encode(1.0, 16)), 16), -1.5);
    }
}
