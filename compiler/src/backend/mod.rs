//! The MPC backend: visibility analysis, nonlinear lowering to stdlib approximations, and
//! lowering of the shared part of the graph to two-party bytecode.
//!
//! - [`partition`]: who may see each value (Public, Client, Server, Shared).
//! - [`nonlinear`]: softmax, layer norm, GELU, SMU-1 on secret data → stdlib DSL functions.
//! - [`lower`]: the shared nodes → `veil_isa` protocols via the program builder.
//! - [`client`]: the client's plaintext preprocessing graph.
//! - [`scale`]: the fixed-point scale policy, shared with the simulator.
//! - [`bounds`]: magnitude bounds that let openings use a narrower ring.

pub mod bounds;
pub mod client;
pub mod lower;
pub mod nonlinear;
pub mod partition;
pub mod scale;
