//! The pest grammar of veil DSL (filled in by the DSL work).
