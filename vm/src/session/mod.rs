//! Serving across machines: the server and the dealer listen, clients connect.
//!
//! - The server connects to the dealer when it starts: it learns the current *epoch* for its
//!   weights, runs the setup (masking its weights) once for it ([`epoch`]), and keeps a pool
//!   of dealer material for upcoming inferences, made while it is idle ([`pool`]).
//! - A client opens one session with the server (TLS, then the veil handshake) and runs any
//!   number of inferences through it ([`client::ClientSession`]); it receives the epoch's
//!   masked weights once, or not at all when its cache holds them. For each inference the
//!   server hands it a *ticket* to the material, with which the client fetches its own seed
//!   from the dealer; the server reads its side from the pool.
//! - The dealer ([`dealer`]) keeps the epochs' seeds, makes the material, and gives each
//!   ticket's client seed out once, to a client.
//!
//! Every step has a timeout and every message a bound, so a missing, stalled or misbehaving
//! peer ends its session with an error and the others go on.

pub mod client;
pub mod dealer;
pub mod epoch;
pub mod pool;
pub mod server;
pub mod wire;

pub use client::ClientSession;
pub use dealer::{deal, DealerEvent};
pub use server::{serve, ServeControl, ServerEvent};

use crate::interp::PartyReport;
use crate::net::tls::TlsConfig;
use crate::net::CommStats;
use std::path::PathBuf;
use std::time::Duration;

/// Options shared by the networked roles.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// How long to wait for any peer message.
    pub timeout: Duration,
    /// Limit on one session's buffer memory, bytes.
    pub max_memory: u64,
    /// Run local kernels compiled by the JIT (default when compiled in) or interpret them.
    pub jit: bool,
    /// Most client sessions a server runs at once; further clients wait in the listen queue.
    pub concurrent: usize,
    /// TLS identity and trust for every connection; `None` is plain TCP (`--insecure`).
    pub tls: Option<TlsConfig>,
    /// Inferences of dealer material a server keeps ready.
    pub pool: usize,
    /// Where a server keeps its pool and its epoch's recorded setup (default: a fresh
    /// directory under the system's temporary directory).
    pub pool_dir: Option<PathBuf>,
    /// A server starts a new epoch (new weight masks) this often.
    pub rotate_every: Option<Duration>,
    /// Where a client keeps the masked weights of the epochs it has seen (`None`: nowhere).
    pub cache: Option<PathBuf>,
    /// A dealer makes a pruned program's next inference before its query (what does not
    /// depend on the revealed lengths; it holds about one unpruned inference's material),
    /// instead of all of it during the query.
    pub ahead: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            timeout: crate::net::DEFAULT_TIMEOUT,
            max_memory: crate::interp::DEFAULT_MAX_MEMORY,
            jit: cfg!(feature = "jit"),
            concurrent: 4,
            tls: None,
            pool: 2,
            pool_dir: None,
            rotate_every: None,
            cache: None,
            ahead: true,
        }
    }
}

/// What one inference of a session measured (either side).
#[derive(Clone, Debug, Default)]
pub struct QueryReport {
    /// The program's rounds and bytes of this inference.
    pub online: CommStats,
    /// Dealer bytes this side used (the server's corrections).
    pub dealer_bytes: u64,
    /// Time waiting for dealer material (an empty pool).
    pub material_wait: Duration,
    /// Time of the online phase (the body).
    pub body: Duration,
    /// From asking for the query to holding the outputs (client) or finishing (server).
    pub latency: Duration,
}

/// What one party of a networked session measured.
#[derive(Clone, Debug)]
pub struct SessionReport {
    /// Session id.
    pub session: [u8; 16],
    /// The epoch the session ran in.
    pub epoch: [u8; 16],
    /// The setup round (the masked weights; zero when the client had them cached).
    pub setup: CommStats,
    /// Each inference.
    pub queries: Vec<QueryReport>,
    /// The party's measurements over the whole session.
    pub report: PartyReport,
}

/// A fresh random 16-byte identifier.
pub fn random_id() -> [u8; 16] {
    crate::prg::Prg::random_seed()
}
