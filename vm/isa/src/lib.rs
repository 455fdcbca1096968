//! veil bytecode.
