//! veil two-party VM.
