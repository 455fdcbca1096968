//! ONNX `TensorProto` to IR tensors: raw little-endian data and every typed field.

use crate::ir::{DType, Data, Tensor};
use veil_onnx_proto::TensorProto;

/// Why a `TensorProto` could not be read: names the tensor and what is unsupported.
#[derive(Debug, thiserror::Error)]
pub enum TensorProtoError {
    /// An element type veil does not implement.
    #[error("tensor `{name}` has the unsupported element type {dtype}")]
    ElementType {
        /// The tensor.
        name: String,
        /// The ONNX element type's name.
        dtype: &'static str,
    },
    /// Data in an external file.
    #[error("tensor `{0}` keeps its data in an external file, which veil does not read")]
    External(String),
    /// A negative dimension.
    #[error("tensor `{name}` has negative dimension {dim}")]
    NegativeDim {
        /// The tensor.
        name: String,
        /// The dimension.
        dim: i64,
    },
    /// More elements than a tensor can hold.
    #[error("tensor `{0}` is too large")]
    TooLarge(String),
    /// Data of the wrong length for the shape.
    #[error("tensor `{name}` of shape {shape:?} ({dtype}) holds {have} elements, expected {want}")]
    Length {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its element type.
        dtype: DType,
        /// Elements it holds.
        have: usize,
        /// Elements its shape needs.
        want: usize,
    },
}

/// Converts an initializer or constant. Errors name the tensor and what is unsupported.
pub fn from_proto(t: &TensorProto) -> Result<Tensor, TensorProtoError> {
    let name = t.name.clone().unwrap_or_default();
    let code = t.data_type.unwrap_or(0);
    let dtype = DType::from_onnx(code)
        .map_err(|dtype| TensorProtoError::ElementType { name: name.clone(), dtype })?;
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(TensorProtoError::External(name));
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(TensorProtoError::NegativeDim { name, dim: d });
        }
        shape.push(d as usize);
    }
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorProtoError::TooLarge(name.clone()))?;
    let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
    let bad_len = |have: usize| TensorProtoError::Length {
        name: name.clone(),
        shape: shape.clone(),
        dtype,
        have,
        want: n,
    };
    let data = match raw {
        Some(bytes) => {
            let es = dtype.byte_size();
            if bytes.len() != n.checked_mul(es).ok_or_else(|| bad_len(0))? {
                return Err(bad_len(bytes.len() / es.max(1)));
            }
            decode_raw(dtype, bytes)
        }
        None => {
            let d = typed(dtype, t);
            if d.len() != n {
                return Err(bad_len(d.len()));
            }
            d
        }
    };
    Ok(Tensor { dtype, shape, data })
}

fn decode_raw(dtype: DType, b: &[u8]) -> Data {
    let le8 = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    match dtype {
        DType::F32 => Data::F32(
            b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
        ),
        DType::F16 => Data::F32(
            b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        ),
        DType::BF16 => Data::F32(
            b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        ),
        DType::F64 => Data::F64(b.chunks_exact(8).map(|c| f64::from_bits(le8(c))).collect()),
        DType::I64 | DType::U64 => Data::I64(b.chunks_exact(8).map(|c| le8(c) as i64).collect()),
        DType::I32 => Data::I64(
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
        ),
        DType::U32 => Data::I64(
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
        ),
        DType::I16 => {
            Data::I64(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect())
        }
        DType::U16 => {
            Data::I64(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect())
        }
        DType::I8 => Data::I64(b.iter().map(|&x| x as i8 as i64).collect()),
        DType::U8 => Data::I64(b.iter().map(|&x| x as i64).collect()),
        DType::Bool => Data::Bool(b.iter().map(|&x| x != 0).collect()),
    }
}

/// The typed fields: float_data, double_data, int64_data, uint64_data, and int32_data (which
/// also holds int8/16, uint8/16, bool and the bit patterns of float16/bfloat16).
fn typed(dtype: DType, t: &TensorProto) -> Data {
    match dtype {
        DType::F32 => Data::F32(t.float_data.clone()),
        DType::F64 => Data::F64(t.double_data.clone()),
        DType::F16 => Data::F32(
            t.int32_data.iter().map(|&x| half::f16::from_bits(x as u16).to_f32()).collect(),
        ),
        DType::BF16 => Data::F32(
            t.int32_data.iter().map(|&x| half::bf16::from_bits(x as u16).to_f32()).collect(),
        ),
        DType::I64 => Data::I64(t.int64_data.clone()),
        DType::U64 => Data::I64(t.uint64_data.iter().map(|&x| x as i64).collect()),
        DType::U32 => Data::I64(t.uint64_data.iter().map(|&x| x as u32 as i64).collect()),
        DType::Bool => Data::Bool(t.int32_data.iter().map(|&x| x != 0).collect()),
        DType::U8 => Data::I64(t.int32_data.iter().map(|&x| x as u8 as i64).collect()),
        DType::U16 => Data::I64(t.int32_data.iter().map(|&x| x as u16 as i64).collect()),
        DType::I8 => Data::I64(t.int32_data.iter().map(|&x| x as i8 as i64).collect()),
        DType::I16 => Data::I64(t.int32_data.iter().map(|&x| x as i16 as i64).collect()),
        DType::I32 => Data::I64(t.int32_data.iter().map(|&x| x as i64).collect()),
    }
}

/// An IR tensor as an ONNX `TensorProto` (raw data), for writing test models and exports.
pub fn to_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut raw = Vec::new();
    match &t.data {
        Data::F32(v) => match t.dtype {
            DType::F16 => {
                v.iter().for_each(|x| raw.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes()))
            }
            DType::BF16 => v
                .iter()
                .for_each(|x| raw.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
            _ => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        },
        Data::F64(v) => v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes())),
        Data::I64(v) => v.iter().for_each(|&x| match t.dtype.byte_size() {
            8 => raw.extend_from_slice(&x.to_le_bytes()),
            4 => raw.extend_from_slice(&(x as i32).to_le_bytes()),
            2 => raw.extend_from_slice(&(x as i16).to_le_bytes()),
            _ => raw.push(x as u8),
        }),
        Data::Bool(v) => v.iter().for_each(|&b| raw.push(b as u8)),
    }
    TensorProto {
        name: Some(name.to_string()),
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(t.dtype.onnx_code()),
        raw_data: Some(raw),
        ..Default::default()
    }
}
