//! NumPy `.npy` files (format 1.0–3.0, C order): what `veil eval` and `veil run` read and write.

use crate::ir::{DType, Data, Tensor};
use std::path::Path;

/// Why an `.npy` file could not be read or written.
pub type NpyError = crate::file_error::FileError;

fn descr_of(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        DType::BF16 => return None,
    })
}

fn dtype_of(descr: &str) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| descr_of(d) == Some(descr))
}

/// Parses `.npy` bytes.
pub fn parse(bytes: &[u8], path: &str) -> Result<Tensor, NpyError> {
    let ferr = |msg: String| NpyError::Format { path: path.to_string(), msg };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(ferr("not an .npy file (missing the \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize, 12)
        }
        _ => return Err(ferr(format!("unsupported .npy version {major}"))),
    };
    let header = bytes.get(start..start + hlen).ok_or_else(|| ferr("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| ferr("header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = &header[i + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| ferr("header has no descr".into()))?;
    let dtype = dtype_of(descr).ok_or_else(|| {
        ferr(format!(
            "unsupported element type `{descr}` (use float32, float64, int64, int32 or bool)"
        ))
    })?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(ferr(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        ));
    }
    let shape_txt = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| ferr("header has no shape".into()))?;
    let mut shape = Vec::new();
    for part in shape_txt.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(
            part.parse::<usize>()
                .map_err(|_| ferr(format!("bad dimension `{part}` in the shape")))?,
        );
    }
    let es = dtype.byte_size();
    // The element count and its byte size are checked: 2^61 eight-byte elements wrapped to
    // 0 bytes and matched an empty file.
    let need = shape.iter().try_fold(es, |a, &d| a.checked_mul(d)).ok_or_else(|| {
        ferr(format!("the shape {shape:?} of {descr} overflows the address space"))
    })?;
    let data = &bytes[start + hlen..];
    if data.len() != need {
        return Err(ferr(format!(
            "holds {} bytes of data, the shape {shape:?} of {descr} needs {need}",
            data.len()
        )));
    }
    let d = match dtype {
        DType::F32 => Data::F32(
            data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        ),
        DType::F16 => Data::F32(
            data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        ),
        DType::F64 => Data::F64(
            data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8"))).collect(),
        ),
        DType::I64 | DType::U64 => Data::I64(
            data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect(),
        ),
        DType::I32 => Data::I64(
            data.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
        ),
        DType::U32 => Data::I64(
            data.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4")) as i64)
                .collect(),
        ),
        DType::I16 => Data::I64(
            data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        ),
        DType::U16 => Data::I64(
            data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        ),
        DType::I8 => Data::I64(data.iter().map(|&b| b as i8 as i64).collect()),
        DType::U8 => Data::I64(data.iter().map(|&b| b as i64).collect()),
        DType::Bool => Data::Bool(data.iter().map(|&b| b != 0).collect()),
        DType::BF16 => unreachable!("no descr maps to bf16"),
    };
    Ok(Tensor { dtype, shape, data: d })
}

/// Reads an `.npy` file.
pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| NpyError::Io { path: p.clone(), error: e })?;
    parse(&bytes, &p)
}

/// Encodes a tensor as `.npy` (format 1.0).
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let descr = descr_of(t.dtype).unwrap_or("<f4");
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!("({})", t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &t.data {
        // f16 arrays are held as f32: written back in their own width, as the header says.
        Data::F32(v) if t.dtype == DType::F16 => {
            v.iter().for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes()))
        }
        Data::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::I64(v) => v.iter().for_each(|&x| match t.dtype.byte_size() {
            8 => out.extend_from_slice(&x.to_le_bytes()),
            4 => out.extend_from_slice(&(x as i32).to_le_bytes()),
            2 => out.extend_from_slice(&(x as i16).to_le_bytes()),
            _ => out.push(x as u8),
        }),
        Data::Bool(v) => v.iter().for_each(|&b| out.push(b as u8)),
    }
    out
}

/// Writes a tensor to `path` atomically (a temporary file renamed into place), so a failure
/// never leaves half a file.
pub fn write(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let p = path.display().to_string();
    let tmp = path.with_extension("npy.partial");
    std::fs::write(&tmp, to_bytes(t)).map_err(|e| NpyError::Io { path: p.clone(), error: e })?;
    std::fs::rename(&tmp, path).map_err(|e| NpyError::Io { path: p, error: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for t in [
            Tensor::f32(vec![2, 3], vec![1.0, -2.5, 3.0, 0.0, 5.5, 6.0]),
            Tensor::i64(vec![4], vec![1, -2, 3, i64::MAX]),
            Tensor::bool(vec![], vec![true]),
            // float16 is held as f32 and written as 2 bytes per element.
            Tensor { dtype: DType::F16, shape: vec![2], data: Data::F32(vec![1.5, -65504.0]) },
        ] {
            assert_eq!(parse(&to_bytes(&t), "x").unwrap(), t);
        }
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse(b"hello", "x").is_err());
        let mut b = to_bytes(&Tensor::f32(vec![4], vec![1.0; 4]));
        b.truncate(b.len() - 3);
        assert!(parse(&b, "x").unwrap_err().to_string().contains("holds 13 bytes"));
    }

    #[test]
    fn an_element_count_that_wraps_is_an_error() {
        let header = |shape: &str| {
            let mut h = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
            h.push('\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b
        };
        // 2^61 elements of 8 bytes: 2^64 bytes, which wrapped to 0 and matched no data.
        let e = parse(&header("(2305843009213693952,)"), "x.npy").unwrap_err().to_string();
        assert_eq!(e, "x.npy: the shape [2305843009213693952] of <f8 overflows the address space");
        let e = parse(&header("(4294967296, 4294967296)"), "x.npy").unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
        // Zero elements are fine however large the other dimensions.
        assert_eq!(parse(&header("(0, 4294967296)"), "x.npy").unwrap().shape, vec![0, 1 << 32]);
    }
}
