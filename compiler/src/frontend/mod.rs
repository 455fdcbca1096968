//! Front ends: ONNX files to IR (the DSL front end is `crate::dsl`).

pub mod onnx;
pub mod weight_names;

/// The element count of `shape`, when every product of its non-zero dimensions fits a `usize`
/// (so any sub-product taken later fits too): shapes from a file or a DSL source are checked
/// with this before anything multiplies them.
pub fn elements(shape: &[usize]) -> Option<usize> {
    let nonzero = shape.iter().filter(|&&d| d != 0).try_fold(1usize, |a, &d| a.checked_mul(d))?;
    Some(if shape.contains(&0) { 0 } else { nonzero })
}
