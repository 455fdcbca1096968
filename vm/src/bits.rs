//! Packed bit vectors and packing of ring elements into messages of a given bit width.

/// Clears the bits at positions `n..` of a packed bit vector.
pub fn clear_tail(words: &mut [u64], n: usize) {
    if !n.is_multiple_of(64) {
        if let Some(last) = words.get_mut(n / 64) {
            *last &= (1u64 << (n % 64)) - 1;
        }
    }
    for w in words.iter_mut().skip(n.div_ceil(64)) {
        *w = 0;
    }
}

/// Bit `i` of a packed bit vector.
#[inline]
pub fn get(words: &[u64], i: usize) -> bool {
    (words[i / 64] >> (i % 64)) & 1 == 1
}

/// Sets bit `i` of a packed bit vector.
#[inline]
pub fn set(words: &mut [u64], i: usize, v: bool) {
    let m = 1u64 << (i % 64);
    if v {
        words[i / 64] |= m;
    } else {
        words[i / 64] &= !m;
    }
}

/// Appends the low `bits` bits of each value to `out`, densely packed, little-endian.
pub fn pack(values: &[u64], bits: u8, out: &mut Vec<u8>) {
    pack_from(values, 0, bits, out)
}

/// Appends bits `lo..lo + bits` of each value to `out`, densely packed, little-endian (an
/// opening that does not send the low bits its reader drops).
pub fn pack_from(values: &[u64], lo: u8, bits: u8, out: &mut Vec<u8>) {
    if bits == 64 {
        // One growth, then fixed-size stores the compiler turns into vector moves (appending
        // 8 bytes at a time checks the capacity per value).
        let start = out.len();
        out.resize(start + 8 * values.len(), 0);
        for (c, v) in out[start..].chunks_exact_mut(8).zip(values) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    // Whole 64-bit words into a buffer sized once (a byte at a time through `push` was 14% of
    // the dealer's time on BERT-base: every narrow correction and opening goes through here).
    let start = out.len();
    let total = packed_len(values.len(), bits);
    out.resize(start + total + 8, 0);
    let buf = &mut out[start..];
    let mask = (1u64 << bits) - 1;
    let (mut acc, mut nacc, mut pos) = (0u128, 0u32, 0usize);
    for &v in values {
        acc |= (((v >> lo) & mask) as u128) << nacc;
        nacc += bits as u32;
        if nacc >= 64 {
            buf[pos..pos + 8].copy_from_slice(&(acc as u64).to_le_bytes());
            pos += 8;
            acc >>= 64;
            nacc -= 64;
        }
    }
    // The last partial word: its bytes past `total` are the slack, cut off below.
    buf[pos..pos + 8].copy_from_slice(&(acc as u64).to_le_bytes());
    out.truncate(start + total);
}

/// Reads `n` values of `bits` bits packed by [`pack`].
pub fn unpack(bytes: &[u8], n: usize, bits: u8, out: &mut [u64]) {
    debug_assert_eq!(bytes.len(), packed_len(n, bits));
    if bits == 64 {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        return;
    }
    let mask = (1u64 << bits) - 1;
    let (mut acc, mut nacc, mut pos) = (0u128, 0u32, 0usize);
    for o in out.iter_mut().take(n) {
        if nacc < bits as u32 {
            // A whole word when 8 bytes are left, else the tail byte by byte.
            if pos + 8 <= bytes.len() {
                let w = u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes"));
                acc |= (w as u128) << nacc;
                nacc += 64;
                pos += 8;
            } else {
                while nacc < bits as u32 {
                    acc |= (bytes[pos] as u128) << nacc;
                    nacc += 8;
                    pos += 1;
                }
            }
        }
        *o = (acc as u64) & mask;
        acc >>= bits;
        nacc -= bits as u32;
    }
}

/// Bytes that `n` values of `bits` bits occupy when packed.
pub fn packed_len(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_at_every_width() {
        let vals: Vec<u64> = (0..37u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        for bits in 1..=64u8 {
            let mut buf = Vec::new();
            pack(&vals, bits, &mut buf);
            assert_eq!(buf.len(), packed_len(vals.len(), bits));
            let mut out = vec![0; vals.len()];
            unpack(&buf, vals.len(), bits, &mut out);
            let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
            for (a, b) in vals.iter().zip(&out) {
                assert_eq!(a & mask, *b);
            }
        }
    }

    #[test]
    fn pack_matches_a_bit_by_bit_reference_at_every_width_and_length() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 200] {
            let vals: Vec<u64> =
                (0..n as u64).map(|i| (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).collect();
            for bits in 1..=63u8 {
                let mut buf = vec![0xAB];
                pack(&vals, bits, &mut buf);
                let mut want = vec![0u8; 1 + packed_len(n, bits)];
                want[0] = 0xAB;
                for (i, v) in vals.iter().enumerate() {
                    for b in 0..bits as usize {
                        if v >> b & 1 == 1 {
                            let at = i * bits as usize + b;
                            want[1 + at / 8] |= 1 << (at % 8);
                        }
                    }
                }
                assert_eq!(buf, want, "n {n}, {bits} bits");
                let mut out = vec![0; n];
                unpack(&buf[1..], n, bits, &mut out);
                let mask = (1u64 << bits) - 1;
                assert!(vals.iter().zip(&out).all(|(a, b)| a & mask == *b), "n {n}, {bits} bits");
            }
        }
    }

    #[test]
    fn full_width_packing_appends_little_endian_words() {
        let vals: Vec<u64> = (0..37u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let mut buf = vec![7u8, 9];
        pack(&vals, 64, &mut buf);
        let mut want = vec![7u8, 9];
        for v in &vals {
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(buf, want);
    }
}
