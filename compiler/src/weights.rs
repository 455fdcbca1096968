//! Model parameters from files: safetensors in and out, and seeded random parameters for
//! benchmarks at any size.

use crate::dsl::WeightSource;
use crate::ir::{DType, Data, Tensor, TensorType};
use std::path::Path;

/// Why a weights file could not be read or written.
pub type WeightsError = crate::file_error::FileError;

fn st_dtype(d: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        DType::F32 => S::F32,
        DType::F64 => S::F64,
        DType::F16 => S::F16,
        DType::BF16 => S::BF16,
        DType::I8 => S::I8,
        DType::I16 => S::I16,
        DType::I32 => S::I32,
        DType::I64 => S::I64,
        DType::U8 => S::U8,
        DType::U16 => S::U16,
        DType::U32 => S::U32,
        DType::U64 => S::U64,
        DType::Bool => S::BOOL,
    }
}

/// Why a tensor could not be read from a safetensors file (the message leaves naming the
/// tensor to the caller; the fields name both).
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// No tensor of that name.
    #[error("not in {path}")]
    Missing {
        /// The file.
        path: String,
        /// The tensor.
        name: String,
    },
    /// An element type veil does not read.
    #[error("has element type {dtype}, which veil does not read")]
    ElementType {
        /// The file.
        path: String,
        /// The tensor.
        name: String,
        /// The element type.
        dtype: String,
    },
}

/// Parameters read from a safetensors file.
pub struct SafetensorsSource {
    path: String,
    bytes: Bytes,
    /// The header, parsed and checked once (a model reads hundreds of tensors).
    header: safetensors::tensor::Metadata,
    /// Where the tensor data starts in `bytes`.
    data_at: usize,
}

/// A file's bytes: read into memory, or mapped (a server's weights file: its pages come in
/// as each tensor is read and go again after it, so loading never holds the file whole).
enum Bytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

impl SafetensorsSource {
    /// Opens and checks a safetensors file, mapped rather than read: a server reads its
    /// tensors once each and [`Self::release`]s them.
    pub fn open_mapped(path: &Path) -> Result<SafetensorsSource, WeightsError> {
        let p = path.display().to_string();
        let io = |e| WeightsError::Io { path: p.clone(), error: e };
        let f = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private; a writer replacing the file renames
        // a new one into place (veil writes files that way), leaving this inode as it was.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
        let (n, header) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| WeightsError::Format { path: p.clone(), msg: e.to_string() })?;
        Ok(SafetensorsSource { path: p, bytes: Bytes::Mapped(map), header, data_at: 8 + n })
    }

    /// Lets the operating system take back the pages of tensor `name` (a mapped file's; a
    /// later read of it faults them in again).
    pub fn release(&self, name: &str) {
        if let (Bytes::Mapped(m), Some(info)) = (&self.bytes, self.header.info(name)) {
            let (start, end) = info.data_offsets;
            // SAFETY: a private read-only file mapping: dropped pages are read again from the
            // file on the next access, so no reference into it sees different bytes.
            let _ = unsafe {
                m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.data_at + start,
                    end - start,
                )
            };
        }
    }

    /// Opens and checks a safetensors file.
    pub fn open(path: &Path) -> Result<SafetensorsSource, WeightsError> {
        let p = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| WeightsError::Io { path: p.clone(), error: e })?;
        SafetensorsSource::from_bytes(bytes, p)
    }

    /// Checks the bytes of a safetensors file (`path` names it in messages).
    pub fn from_bytes(bytes: Vec<u8>, path: String) -> Result<SafetensorsSource, WeightsError> {
        let (n, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| WeightsError::Format { path: path.clone(), msg: e.to_string() })?;
        // read_metadata checked that the header and every tensor's offsets fit the file.
        Ok(SafetensorsSource { path, bytes: Bytes::Owned(bytes), header, data_at: 8 + n })
    }

    /// The file's string metadata (empty when it has none).
    pub fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.header.metadata().clone().unwrap_or_default()
    }

    /// Every tensor name in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.header.tensors().into_keys().collect();
        v.sort();
        v
    }

    /// One tensor by name.
    pub fn tensor(&self, name: &str) -> Result<Tensor, TensorError> {
        let info = self.header.info(name).ok_or_else(|| TensorError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let (start, end) = info.data_offsets;
        let data = &self.bytes[self.data_at + start..self.data_at + end];
        let shape = info.shape.clone();
        use safetensors::Dtype as S;
        let d = match info.dtype {
            S::F32 => Data::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
            S::F16 => Data::F32(
                data.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            S::BF16 => Data::F32(
                data.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            S::F64 => Data::F64(
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            ),
            S::I64 => Data::I64(
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            ),
            S::I32 => Data::I64(
                data.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                    .collect(),
            ),
            S::BOOL => Data::Bool(data.iter().map(|&b| b != 0).collect()),
            other => {
                return Err(TensorError::ElementType {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let dtype = match info.dtype {
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F64 => DType::F64,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            _ => DType::Bool,
        };
        Ok(Tensor { dtype, shape, data: d })
    }
}

impl WeightSource for SafetensorsSource {
    fn get(&mut self, key: &str, ty: &TensorType) -> Result<Tensor, String> {
        let t = self.tensor(key).map_err(|e| e.to_string())?;
        if t.shape != ty.shape {
            return Err(format!(
                "{} holds shape {:?}, the model declares {ty}",
                self.path, t.shape
            ));
        }
        if t.dtype.is_float() && ty.dtype == DType::F32 && t.dtype != DType::F32 {
            return Ok(Tensor { dtype: DType::F32, ..t });
        }
        if t.dtype != ty.dtype {
            return Err(format!("{} holds {}, the model declares {ty}", self.path, t.dtype));
        }
        Ok(t)
    }
}

/// Parameters already in memory by name (e.g. `frontend::weight_names::exported_weights` of an
/// ONNX graph, without a round trip through a file).
pub struct TensorSource(pub std::collections::HashMap<String, Tensor>);

impl WeightSource for TensorSource {
    fn get(&mut self, key: &str, ty: &TensorType) -> Result<Tensor, String> {
        let t = self.0.get(key).ok_or_else(|| format!("no tensor `{key}`"))?;
        if t.ty() != *ty {
            return Err(format!("`{key}` is {}, the model declares {ty}", t.ty()));
        }
        Ok(t.clone())
    }
}

/// Deterministic random parameters with realistic scales: matrices N(0, 0.02), vectors whose
/// name says they scale a normalisation (`ln`, `norm`, `gamma`, `.weight` of a vector) 1 + N(0, 0.1),
/// other vectors (biases) N(0, 0.05). Each tensor's values depend only on the seed and its name,
/// so adding a parameter does not change the others.
pub struct RandomSource {
    seed: u64,
}

impl RandomSource {
    /// Parameters drawn from `seed`.
    pub fn new(seed: u64) -> RandomSource {
        RandomSource { seed }
    }
}

/// SplitMix64: a small, well-mixed generator for reproducible test data.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

impl WeightSource for RandomSource {
    fn get(&mut self, key: &str, ty: &TensorType) -> Result<Tensor, String> {
        let mut r = SplitMix(self.seed ^ name_hash(key));
        let n = ty.numel();
        let lower = key.to_lowercase();
        let is_scale = ty.rank() == 1
            && (lower.contains("ln")
                || lower.contains("norm")
                || lower.contains("gamma")
                || lower.ends_with(".g"));
        let (mean, sd) = if ty.rank() >= 2 {
            (0.0, 0.02)
        } else if is_scale {
            (1.0, 0.1)
        } else {
            (0.0, 0.05)
        };
        let v: Vec<f64> = (0..n).map(|_| mean + sd * r.normal()).collect();
        Ok(crate::eval::from_f64s(ty.dtype, ty.shape.clone(), v))
    }
}

/// Writes tensors to a safetensors file atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), WeightsError> {
    write_safetensors_with(path, tensors, None)
}

/// Writes tensors and string metadata to a safetensors file atomically.
pub fn write_safetensors_with(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), WeightsError> {
    let p = path.display().to_string();
    let bufs: Vec<(String, Vec<u8>, &Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let proto = crate::frontend::onnx::tensor::to_proto(n, t);
            (n.clone(), proto.raw_data.unwrap_or_default(), t)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, b, t)| {
            let v = safetensors::tensor::TensorView::new(st_dtype(t.dtype), t.shape.clone(), b)
                .map_err(|e| WeightsError::Format {
                    path: p.clone(),
                    msg: format!("tensor `{n}`: {e}"),
                })?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_, WeightsError>>()?;
    let bytes = safetensors::tensor::serialize(views, metadata)
        .map_err(|e| WeightsError::Format { path: p.clone(), msg: e.to_string() })?;
    let tmp = path.with_extension("safetensors.partial");
    std::fs::write(&tmp, bytes).map_err(|e| WeightsError::Io { path: p.clone(), error: e })?;
    std::fs::rename(&tmp, path).map_err(|e| WeightsError::Io { path: p, error: e })
}
