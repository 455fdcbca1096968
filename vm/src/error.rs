//! VM errors. Each says whose fault it is: the program file, the inputs, the peer, the dealer.

use crate::net::TransportError;
use veil_isa::{DecodeError, ValidateError};

/// Why a party or the dealer stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The program file could not be decoded (corrupt, truncated, wrong version).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The program decoded but is not a valid program (hostile or buggy compiler output).
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    /// Communication with the peer or the dealer failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An input or weight tensor does not match the program's declaration.
    #[error("{what} `{name}`: {msg}")]
    Tensor {
        /// "input", "weight" or "output".
        what: &'static str,
        /// Its name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The dealer sent material that does not fit the program.
    #[error("dealer material for {section} instruction #{index} (`{name}`): {msg}")]
    Dealer {
        /// "setup" or "body".
        section: &'static str,
        /// Instruction index.
        index: usize,
        /// Mnemonic.
        name: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A session would hold more memory than its limit.
    #[error(
        "{what} needs {need} bytes of memory, more than the limit of {limit} (--session-memory)"
    )]
    Memory {
        /// Bytes needed.
        need: u64,
        /// The limit.
        limit: u64,
        /// What needed it.
        what: String,
    },
    /// The peer's message does not fit the program (e.g. the wrong number of bytes).
    #[error("protocol violation in {section} round ending at instruction #{index}: {msg}")]
    Protocol {
        /// "setup" or "body".
        section: &'static str,
        /// Index of the exchange.
        index: usize,
        /// What is wrong.
        msg: String,
    },
}
