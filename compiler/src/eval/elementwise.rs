//! Element access, dtype rounding and wrapping, and broadcasting.

use crate::ir::tensor::strides;
use crate::ir::{DType, Data, Tensor};

/// Every element as f64.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec()
}

/// Wraps an integer to the width of `dtype` (two's complement), as ONNX integer arithmetic does.
pub fn wrap(dtype: DType, v: i64) -> i64 {
    match dtype {
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::I16 => v as i16 as i64,
        DType::U16 => v as u16 as i64,
        DType::I32 => v as i32 as i64,
        DType::U32 => v as u32 as i64,
        _ => v,
    }
}

/// Rounds an f64 to the precision of a float dtype (as stored: f32 holds f16/bf16 values).
pub fn round_float(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        DType::F32 => v as f32 as f64,
        _ => v,
    }
}

/// A tensor of `dtype` from f64 values (floats rounded to the format, integers truncated
/// toward zero and wrapped, bools as `v != 0`).
pub fn from_f64s(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Tensor {
    let data = match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            Data::F32(v.into_iter().map(|x| round_float(dtype, x) as f32).collect())
        }
        DType::F64 => Data::F64(v),
        DType::Bool => Data::Bool(v.into_iter().map(|x| x != 0.0).collect()),
        _ => Data::I64(v.into_iter().map(|x| wrap(dtype, float_to_int(dtype, x))).collect()),
    };
    Tensor { dtype, shape, data }
}

/// Float to integer conversion: truncation toward zero, NaN to 0, saturating at i64 (and u64)
/// bounds before wrapping.
pub fn float_to_int(dtype: DType, x: f64) -> i64 {
    if x.is_nan() {
        return 0;
    }
    if dtype == DType::U64 {
        return x.trunc().clamp(0.0, u64::MAX as f64) as u64 as i64;
    }
    x.trunc().clamp(i64::MIN as f64, i64::MAX as f64) as i64
}

/// For every element of `out` (row-major), the offset of the element of a tensor of shape
/// `inp` that numpy broadcasting maps to it.
pub fn bcast_offsets(inp: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    if inp == out {
        return (0..n).collect();
    }
    let pad = out.len() - inp.len();
    let ist = strides(inp);
    // Stride of each output dim in the input (0 where broadcast).
    let eff: Vec<usize> = (0..out.len())
        .map(|k| if k < pad || inp[k - pad] == 1 { 0 } else { ist[k - pad] })
        .collect();
    let mut offs = Vec::with_capacity(n);
    let mut idx = vec![0usize; out.len()];
    let mut off = 0usize;
    for _ in 0..n {
        offs.push(off);
        for k in (0..out.len()).rev() {
            idx[k] += 1;
            off += eff[k];
            if idx[k] < out[k] {
                break;
            }
            off -= eff[k] * idx[k];
            idx[k] = 0;
        }
    }
    offs
}
