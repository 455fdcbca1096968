//! veil's two-party VM.
//!
//! - [`ring`]: Z_2^64 and fixed-point encoding.
//! - [`prg`]: the AES-CTR PRG behind all dealer material.
//! - [`dealer`]: the dealer, which generates correlated randomness for a program.
//! - [`ahead`]: a pruned program's material, made before the query.
//! - [`material`]: the parties' side of the dealer material.
//! - [`net`]: transports (in-memory, TCP) with byte and round counting.
//! - [`store`]: a party's buffers, shared weights and the pool of arrays for reuse.
//! - [`interp`]: the interpreter ([`interp::PartyVm`]).
//! - `jit` (feature `jit`, on by default): fused local kernels compiled with Cranelift.
//! - [`run`]: running a whole session (dealer, client, server) in one process.
//! - [`session`]: the same across machines (serve, connect, deal over TCP).
//!
//! The protocols themselves are expanded by `veil_isa::builder`; each instruction here is one
//! step of one (documented there with its cost).
#![deny(missing_docs)]

pub mod ahead;
pub mod bits;
pub mod dealer;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod interp;
#[cfg(feature = "jit")]
pub mod jit;
pub mod kernels;
pub mod material;
pub mod net;
pub mod prg;
pub mod ring;
pub mod run;
pub mod session;
pub mod store;
#[doc(hidden)]
pub mod testdata;

pub use error::VmError;
pub use interp::{Output, PartyReport, PartyVm, Values, FUSED};
pub use run::{run_session, PartyData, RunOptions, RunResult};
pub use store::Slot;
