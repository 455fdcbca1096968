//! veil test harness.
