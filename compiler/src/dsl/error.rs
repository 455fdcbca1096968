//! DSL errors, rendered by pest with `file:line:col` and a caret under the offending code.

use veil_grammar::Rule;

/// A DSL error.
#[derive(Debug, thiserror::Error)]
pub enum DslError {
    /// The text does not parse.
    #[error("{0}")]
    Syntax(Box<pest::error::Error<Rule>>),
    /// The program parses but is wrong (unknown name, shape mismatch, visibility, recursion,
    /// wrong arguments), located in the source.
    #[error("{0}")]
    At(Box<pest::error::Error<Rule>>),
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The path.
        path: String,
        /// The OS error (in the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// Anything else, with enough context in the message.
    #[error("{0}")]
    Other(String),
}

/// Renders a message at a byte range of a source file.
pub fn at(path: &str, src: &str, start: usize, end: usize, message: impl Into<String>) -> DslError {
    let variant = pest::error::ErrorVariant::CustomError { message: message.into() };
    let span =
        pest::Span::new(src, start.min(src.len()), end.min(src.len()).max(start.min(src.len())))
            .unwrap_or_else(|| pest::Span::new(src, 0, 0).expect("empty span"));
    DslError::At(Box::new(pest::error::Error::new_from_span(variant, span).with_path(path)))
}
