//! The pest grammar of veil's DSL (`dsl.pest`, files `*.veil`) and its derived parser.
//!
//! Nothing else lives here: the AST and the lowering to IR are in `veil-compiler`. Keeping the
//! grammar in its own crate means editing it recompiles only the parser and its dependents.
//!
//! ```
//! use pest::Parser;
//! use veil_grammar::{DslParser, Rule};
//! let src = "fn double(x) { x + x }";
//! assert!(DslParser::parse(Rule::file, src).is_ok());
//! ```

use pest_derive::Parser;

/// The DSL parser; `DslParser::parse(Rule::file, src)` parses a whole file.
#[derive(Parser)]
#[grammar = "dsl.pest"]
pub struct DslParser;

#[cfg(test)]
mod tests {
    use super::*;
    use pest::Parser;

    fn ok(src: &str) {
        if let Err(e) = DslParser::parse(Rule::file, src) {
            panic!("{e}");
        }
    }

    #[test]
    fn parses_the_language() {
        ok(r#"
            // a comment
            import nn;
            const S = 128;
            /// Doubles.
            fn double(x, k = 2) { let y = x * k; y }
            fn poly(x) {
                let c = [0.5, -0.25e-3, 1e2];
                let acc = c[0];
                repeat i in 1..3 { acc = acc * x + c[i]; }
                return -acc ^ 2;
            }
            /// A tiny model.
            model tiny {
                input x: client f32[1, S];
                param w: private f32[S, 4] = "layer.{l}.w";
                let h = softmax(x @ w, axis = -1);
                output y = h;
            }
        "#);
    }

    #[test]
    fn rejects_keywords_as_names_and_bad_syntax() {
        assert!(DslParser::parse(Rule::file, "fn let(x) { x }").is_err());
        assert!(DslParser::parse(Rule::file, "fn f(x) { let = x; }").is_err());
        assert!(DslParser::parse(Rule::file, "model m { input x: secret f32[1]; }").is_err());
    }
}
