//! veil stdlib.
