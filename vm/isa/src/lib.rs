//! veil bytecode, shared by the compiler (which emits it) and the VM (which runs it).
//!
//! - [`ops`]: the single instruction list (`for_each_op!`) and the generated [`Instr`].
//! - [`class`]: each instruction's [`Class`] (local, comm, dealer, ...), declared in the list.
//! - [`visit`]: per-role visitors generated from the list (the party's, the dealer's, the
//!   JIT's), so that a new instruction does not compile until each role handles it.
//! - [`program`]: the file container ([`Program`]) and its encoding.
//! - [`validate`]: load-time checks that make a hostile program harmless to the VM.
//! - [`verify`]: the leakage analysis: what a program reveals, and a refusal of one that
//!   opens or sends a secret without a fresh mask.
//! - [`cost`]: bytes, rounds and dealer material of every instruction.
//! - [`lifetime`]: which buffers a party keeps, when each value dies, and the memory a
//!   session needs.
//! - [`disas`]: the stable text disassembly.
//! - [`builder`]: [`builder::ProgramBuilder`], which expands protocols (Beaver products,
//!   truncation, comparison, ...) into instructions and schedules communication into rounds.
#![deny(missing_docs)]

pub mod builder;
pub mod class;
pub mod cost;
pub mod disas;
pub mod dynamic;
pub mod lifetime;
pub mod operand;
pub mod ops;
pub mod program;
pub mod segment;
pub mod template;
pub mod validate;
pub mod verify;
pub mod visit;

pub use class::Class;
pub use dynamic::{DynField, Dynamic, Poly};
pub use operand::{Buf, Dims, Party, SlotMut, Strides};
pub use ops::Instr;
pub use program::{BufDecl, ConstInit, ConstOrigin, IoDecl, Kind, Program, Tag};
pub use segment::Segments;
pub use validate::{validate, validate_instance, ValidateError};
pub use verify::{verify, Reveals, VerifyError};
pub use visit::{DealerVisitor, ElementwiseVisitor, PartyVisitor};

/// Why a program file could not be decoded. Always the file's fault, never a VM bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a veil program at all.
    #[error("not a veil program: {0}")]
    NotAProgram(String),
    /// Written by an incompatible compiler.
    #[error(
        "program format version {found}, this VM runs version {expected}: recompile the model"
    )]
    Version {
        /// Version in the file.
        found: u32,
        /// Version this build understands.
        expected: u32,
    },
    /// The payload does not match its recorded hash: the file was corrupted or edited.
    #[error("program is corrupt: its content does not match its recorded SHA-256")]
    HashMismatch,
    /// The file ends in the middle of a field.
    #[error("program is truncated at byte {at}")]
    Truncated {
        /// Byte offset.
        at: usize,
    },
    /// A field holds an impossible value.
    #[error("program is malformed at byte {at}: {what}")]
    Malformed {
        /// Byte offset.
        at: usize,
        /// What is wrong.
        what: String,
    },
}

impl DecodeError {
    /// Shifts a payload-relative offset to a file offset.
    pub fn offset(self, by: usize) -> DecodeError {
        match self {
            DecodeError::Truncated { at } => DecodeError::Truncated { at: at + by },
            DecodeError::Malformed { at, what } => DecodeError::Malformed { at: at + by, what },
            e => e,
        }
    }
}
