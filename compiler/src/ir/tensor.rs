//! Dense tensors: constant data in the IR and values in the reference evaluator.

use super::dtype::{DType, TensorType};

/// Element storage. Narrow floats are held as f32, every integer type as i64 (u64 by bit
/// pattern), so the evaluator needs one kernel per storage class, not per dtype.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Data {
    /// f32, f16 and bf16 values.
    F32(Vec<f32>),
    /// f64 values.
    F64(Vec<f64>),
    /// All integer types.
    I64(Vec<i64>),
    /// Booleans.
    Bool(Vec<bool>),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense, row-major tensor with a static shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tensor {
    /// Element type (determines how `data` is interpreted).
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major elements; `data.len() == shape.iter().product()`.
    pub data: Data,
}

/// The storage class a dtype uses.
pub fn storage_of(dtype: DType) -> fn(usize) -> Data {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => |n| Data::F32(vec![0.0; n]),
        DType::F64 => |n| Data::F64(vec![0.0; n]),
        DType::Bool => |n| Data::Bool(vec![false; n]),
        _ => |n| Data::I64(vec![0; n]),
    }
}

impl Tensor {
    /// A zero-filled tensor of the given type.
    pub fn zeros(ty: &TensorType) -> Tensor {
        Tensor { dtype: ty.dtype, shape: ty.shape.clone(), data: storage_of(ty.dtype)(ty.numel()) }
    }

    /// An f32 tensor from values; panics if the shape does not match (programming error).
    pub fn f32(shape: impl Into<Vec<usize>>, values: Vec<f32>) -> Tensor {
        let shape = shape.into();
        assert_eq!(shape.iter().product::<usize>(), values.len(), "f32 tensor shape/data mismatch");
        Tensor { dtype: DType::F32, shape, data: Data::F32(values) }
    }

    /// An i64 tensor from values; panics if the shape does not match (programming error).
    pub fn i64(shape: impl Into<Vec<usize>>, values: Vec<i64>) -> Tensor {
        let shape = shape.into();
        assert_eq!(shape.iter().product::<usize>(), values.len(), "i64 tensor shape/data mismatch");
        Tensor { dtype: DType::I64, shape, data: Data::I64(values) }
    }

    /// A bool tensor from values; panics if the shape does not match (programming error).
    pub fn bool(shape: impl Into<Vec<usize>>, values: Vec<bool>) -> Tensor {
        let shape = shape.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "bool tensor shape/data mismatch"
        );
        Tensor { dtype: DType::Bool, shape, data: Data::Bool(values) }
    }

    /// A rank-0 f32 tensor.
    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::f32(Vec::<usize>::new(), vec![v])
    }

    /// The static type of this tensor.
    pub fn ty(&self) -> TensorType {
        TensorType { dtype: self.dtype, shape: self.shape.clone() }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Element `i` (row-major) as f64, whatever the storage.
    pub fn get_f64(&self, i: usize) -> f64 {
        match &self.data {
            Data::F32(v) => v[i] as f64,
            Data::F64(v) => v[i],
            Data::I64(v) if self.dtype == DType::U64 => v[i] as u64 as f64,
            Data::I64(v) => v[i] as f64,
            Data::Bool(v) => v[i] as u8 as f64,
        }
    }

    /// All elements as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.numel()).map(|i| self.get_f64(i)).collect()
    }

    /// All elements as i64 (floats truncated toward zero, bools as 0/1).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::F64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
            Data::Bool(v) => v.iter().map(|&b| b as i64).collect(),
        }
    }

    /// The f32 storage, if this tensor has it.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The integer storage, if this tensor has it.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }

    /// True when every element is a finite number or the tensor is not floating-point.
    pub fn all_finite(&self) -> bool {
        match &self.data {
            Data::F32(v) => v.iter().all(|x| x.is_finite()),
            Data::F64(v) => v.iter().all(|x| x.is_finite()),
            _ => true,
        }
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
