//! The error of reading or writing one of veil's files (`.npy`, safetensors, compiled
//! artifacts): it always names the file.

use std::path::Path;

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// I/O failure (the OS error is in the message, not a `source()`: a chain printed
    /// with `{:#}` shows it once).
    #[error("{path}: {error}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        error: std::io::Error,
    },
    /// Not the expected kind of file, damaged, or holding something unsupported.
    #[error("{path}: {msg}")]
    Format {
        /// File.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

impl FileError {
    /// For `map_err`: an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |error| FileError::Io { path: path.display().to_string(), error }
    }

    /// A format error on `path`.
    pub fn format(path: &Path, msg: impl std::fmt::Display) -> FileError {
        FileError::Format { path: path.display().to_string(), msg: msg.to_string() }
    }
}
