//! veil examples.
