//! Shapes in a DSL model are multiplied with checks: a declared or computed shape whose element
//! count overflows is a located error, never a wrapped size or an overflow panic.

use veil_compiler::dsl::{lower_model, stdlib_loader, WeightSource};
use veil_compiler::ir::{Tensor, TensorType};

/// Parameters are never drawn: every model here fails before it needs one.
struct NoWeights;
impl WeightSource for NoWeights {
    fn get(&mut self, key: &str, _: &TensorType) -> Result<Tensor, String> {
        Err(format!("`{key}` was asked for"))
    }
}

fn error_of(body: &str) -> String {
    let src = format!("model m {{\n    input x: client f32[2, 3];\n    {body}\n}}\n");
    let mut l = stdlib_loader();
    l.load_source("m.veil", src).unwrap();
    match lower_model(&l, "m", &mut NoWeights) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("`{body}` should not lower"),
    }
}

#[test]
fn a_declared_shape_past_usize_is_an_error() {
    // 2^32 · 2^32 · 2 wrapped to 0 elements.
    let e = error_of("input z: client f32[4294967296, 4294967296, 2];\n    output y = z;");
    assert!(
        e.contains("m.veil:3")
            && e.contains("the shape [4294967296, 4294967296, 2] has more elements"),
        "{e}"
    );
}

#[test]
fn reshape_and_expand_targets_are_checked_products() {
    for body in [
        // The known dimensions' product wrapped to 6, which divides 6.
        "output y = reshape(x, [-1, 4294967296, 4294967296, 6]);",
        "output y = reshape(x, [4294967296, 4294967296, 0]);",
        "output y = expand(x, [4294967296, 4294967296, 2, 3]);",
    ] {
        let e = error_of(body);
        assert!(
            e.contains("has more elements than a tensor can hold") || e.contains("cannot reshape"),
            "{body}: {e}"
        );
        assert!(e.contains("m.veil:3"), "{body}: {e}");
    }
}

#[test]
fn a_negative_dimension_beside_a_hole_is_refused() {
    // -2 and -3 made the known product 6 and became 2^64 - 2 and 2^64 - 3.
    let e = error_of("output y = reshape(x, [-1, -2, -3]);");
    assert!(e.contains("cannot reshape 6 elements to [-1, -2, -3]"), "{e}");
}
