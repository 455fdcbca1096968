//! The client: one session with the server, any number of inferences through it.
//!
//! ```no_run
//! # fn demo(prog: &veil_isa::Program, inputs: Vec<Vec<(String, veil_vm::Values)>>) -> Result<(), veil_vm::VmError> {
//! use veil_vm::session::{ClientSession, NetOptions};
//! let opts = NetOptions::default();
//! let mut s = ClientSession::connect(prog, "10.0.0.2:7700", "10.0.0.3:7701", &opts)?;
//! for x in &inputs {
//!     let (outputs, report) = s.infer(x)?;
//!     // ...
//! }
//! s.close()?;
//! # Ok(()) }
//! ```

use super::epoch::{setup_has_round, Cache};
use super::wire::{ClientMsg, FromDealer, Id, ServerMsg, Welcome, MAX_CONTROL};
use super::{random_id, NetOptions, QueryReport, SessionReport};
use crate::error::VmError;
use crate::interp::{Output, PartyVm, Values};
use crate::material::Material;
use crate::net::hello::Hello;
use crate::net::role::Role;
use crate::net::tcp::{Conn, TcpTransport};
use crate::net::{CommStats, Expect, TransportError};
use std::time::Instant;
use veil_isa::{Party, Program};

/// What a client sees while it waits (for progress messages).
#[derive(Debug)]
pub enum ClientEvent {
    /// Nothing listens at the server's or dealer's address yet (seconds waited).
    Connecting(Role, u64),
    /// The server has no material ready; the dealer is making it.
    WaitingForMaterial,
    /// The server moved to a new epoch: reconnecting (and downloading the new masked
    /// weights).
    Rotated,
    /// The setup: receiving the epoch's masked weights (`false`: taken from the cache).
    Setup(bool),
}

/// A client's session: a VM over one TLS connection to the server, with the epoch's masked
/// weights loaded once.
pub struct ClientSession<'p> {
    prog: &'p Program,
    server: String,
    dealer: String,
    opts: NetOptions,
    vm: PartyVm<'p>,
    session: Id,
    epoch: Id,
    setup: CommStats,
    queries: Vec<QueryReport>,
    progress: Option<Box<dyn FnMut(usize, usize) + Send + 'p>>,
    events: Option<Box<dyn FnMut(ClientEvent) + Send + 'p>>,
    reconnects: usize,
    /// The cache the epoch's masked weights go to when the session closes.
    to_cache: Option<Cache>,
}

impl<'p> ClientSession<'p> {
    /// Connects to the server at `server` (the dealer at `dealer` is dialled per inference)
    /// and runs the setup: the epoch's masked weights from the cache (`opts.cache`) or from
    /// the server, who sends them once per client and epoch.
    pub fn connect(
        prog: &'p Program,
        server: &str,
        dealer: &str,
        opts: &NetOptions,
    ) -> Result<ClientSession<'p>, VmError> {
        ClientSession::connect_with(prog, server, dealer, opts, None)
    }

    /// As [`Self::connect`], reporting what it waits for to `events`.
    pub fn connect_with(
        prog: &'p Program,
        server: &str,
        dealer: &str,
        opts: &NetOptions,
        mut events: Option<Box<dyn FnMut(ClientEvent) + Send + 'p>>,
    ) -> Result<ClientSession<'p>, VmError> {
        veil_isa::validate(prog)?;
        let session = random_id();
        let hello = Hello { role: Role::Client, session, program: prog.hash() };
        let mut waiting = |secs| {
            if let Some(e) = events.as_mut() {
                e(ClientEvent::Connecting(Role::Server, secs))
            }
        };
        let s = crate::net::tcp::connect_retry(server, Role::Server, opts.timeout, &mut waiting)?;
        let mut link = crate::net::tcp::open(s, opts.tls.as_ref(), Role::Server, opts.timeout)?;
        crate::net::hello::handshake(&mut link, hello, Role::Server, opts.timeout)?;
        let peer = TcpTransport::new(link, "server", opts.timeout)?;
        let mut vm = PartyVm::new(
            prog,
            Party::Client,
            Material::none(Party::Client),
            Box::new(peer),
            opts.max_memory,
        )?;
        vm.set_jit(opts.jit);
        let w = vm.control(ClientMsg::Empty.encode(), MAX_CONTROL)?;
        let epoch = match Welcome::decode(&w).map_err(malformed)? {
            Welcome::Ok { epoch } => epoch,
            Welcome::Refused(why) => {
                return Err(TransportError::Refused { peer: "server".into(), why }.into())
            }
        };
        let mut setup = CommStats::default();
        let mut to_cache = None;
        let cache = opts.cache.as_ref().map(Cache::new);
        // The cache is read while the VM plans (and compiles) its program.
        let (prepared, held) = std::thread::scope(|sc| {
            let load = sc.spawn(|| {
                let c = cache.as_ref().filter(|_| setup_has_round(prog))?;
                c.load(prog, &epoch)
            });
            let prepared = vm.prepare_now();
            (prepared, load.join().unwrap_or(None))
        });
        prepared?;
        if setup_has_round(prog) {
            let cached = held.is_some();
            if let Some(e) = events.as_mut() {
                e(ClientEvent::Setup(!cached));
            }
            expect_server(&vm.control(ClientMsg::Setup { cached }.encode(), MAX_CONTROL)?)?;
            match held {
                Some(c) => vm.restore_setup_mapped(c.map.clone(), &c.bufs)?,
                None => {
                    vm.run_setup()?;
                    setup = vm.report().setup;
                    // Written when the session closes: not against the first query's time.
                    to_cache = cache;
                }
            }
        } else {
            vm.run_setup()?;
        }
        Ok(ClientSession {
            prog,
            server: server.to_string(),
            dealer: dealer.to_string(),
            opts: opts.clone(),
            vm,
            session,
            epoch,
            setup,
            queries: Vec::new(),
            progress: None,
            events,
            reconnects: 0,
            to_cache,
        })
    }

    /// Calls `f(done, total)` as body instructions of each inference complete.
    pub fn on_progress(&mut self, f: impl FnMut(usize, usize) + Send + 'p) {
        self.progress = Some(Box::new(f));
    }

    /// The epoch of the masked weights this session holds.
    pub fn epoch(&self) -> Id {
        self.epoch
    }

    /// Bytes and rounds of this session's setup (zero when the cache held the weights).
    pub fn setup(&self) -> CommStats {
        self.setup
    }

    /// Runs one inference on `inputs` (this party's program inputs): asks the server for the
    /// next query, fetches this query's seed from the dealer, runs the online phase, and
    /// returns the outputs revealed to the client with what the query measured. A server
    /// that rotated its epoch is reconnected to transparently.
    pub fn infer(
        &mut self,
        inputs: &[(String, Values)],
    ) -> Result<(Vec<Output>, QueryReport), VmError> {
        loop {
            match self.try_infer(inputs)? {
                Some(r) => return Ok(r),
                None => self.reconnect()?,
            }
        }
    }

    fn reconnect(&mut self) -> Result<(), VmError> {
        self.reconnects += 1;
        if self.reconnects > 3 {
            return Err(TransportError::Refused {
                peer: "server".into(),
                why: "it rotated its epoch three times in a row".into(),
            }
            .into());
        }
        if let Some(e) = self.events.as_mut() {
            e(ClientEvent::Rotated);
        }
        let events = self.events.take();
        let progress = self.progress.take();
        let mut fresh =
            ClientSession::connect_with(self.prog, &self.server, &self.dealer, &self.opts, events)?;
        fresh.progress = progress;
        fresh.queries = std::mem::take(&mut self.queries);
        fresh.reconnects = self.reconnects;
        *self = fresh;
        Ok(())
    }

    /// One attempt; `None` when the server rotated its epoch.
    fn try_infer(
        &mut self,
        inputs: &[(String, Values)],
    ) -> Result<Option<(Vec<Output>, QueryReport)>, VmError> {
        let t0 = Instant::now();
        self.vm.set_inputs(inputs)?;
        expect_server(&self.vm.control(ClientMsg::Next.encode(), MAX_CONTROL)?)?;
        let (ticket, live) = loop {
            let m = self.vm.control(ClientMsg::Empty.encode(), MAX_CONTROL)?;
            match ServerMsg::decode(&m).map_err(malformed)? {
                ServerMsg::Entry { ticket, live } => break (ticket, live),
                ServerMsg::Wait => {
                    if let Some(e) = self.events.as_mut() {
                        e(ClientEvent::WaitingForMaterial);
                    }
                }
                ServerMsg::Rotated => return Ok(None),
                ServerMsg::Refused(why) => {
                    return Err(TransportError::Refused { peer: "server".into(), why }.into())
                }
                ServerMsg::Empty => {
                    return Err(malformed("an empty answer to a query".into()).into())
                }
            }
        };
        let material_wait = t0.elapsed();
        let hello = Hello { role: Role::Client, session: ticket, program: self.prog.hash() };
        let mut conn = Conn::dial(
            &self.dealer,
            Role::Dealer,
            hello,
            self.opts.timeout,
            self.opts.tls.as_ref(),
            &mut |_| {},
        )?;
        let seed = match FromDealer::decode(&conn.recv(Expect::AtMost(MAX_CONTROL))?) {
            Ok(FromDealer::Seed(s)) => s,
            Ok(FromDealer::Refused(why)) => {
                return Err(TransportError::Refused { peer: "dealer".into(), why }.into())
            }
            Ok(m) => {
                return Err(malformed_from("dealer", format!("{m:?} where a seed was due")).into())
            }
            Err(what) => return Err(malformed_from("dealer", what).into()),
        };
        self.vm.set_material(Material::new(Party::Client, seed, None));
        if live {
            // The dealer makes a pruned program's material as the run reveals each length.
            self.vm.set_len_sink(Box::new(conn));
        } else {
            conn.shutdown();
        }
        if let Some(p) = self.progress.take() {
            self.vm.on_progress(p);
        }
        let before = self.vm.report();
        let t1 = Instant::now();
        let r = self.vm.run_body();
        let body = t1.elapsed();
        r?;
        let after = self.vm.report();
        let q = QueryReport {
            online: after.body.since(before.body),
            dealer_bytes: 0,
            material_wait,
            body,
            latency: t0.elapsed(),
        };
        self.queries.push(q.clone());
        Ok(Some((self.vm.outputs(), q)))
    }

    /// Ends the session (tells the server), keeps the epoch's masked weights in the cache
    /// when they were downloaded, and returns what the session measured.
    pub fn close(mut self) -> Result<SessionReport, VmError> {
        self.vm.control(ClientMsg::Bye.encode(), MAX_CONTROL)?;
        if let Some(c) = self.to_cache.take() {
            // A cache that cannot be written costs the next session a download, nothing else.
            let _ = c.store(self.prog, &self.epoch, &self.vm.setup_results());
        }
        Ok(self.report())
    }

    /// What the session measured so far.
    pub fn report(&self) -> SessionReport {
        SessionReport {
            session: self.session,
            epoch: self.epoch,
            setup: self.setup,
            queries: self.queries.clone(),
            report: self.vm.report(),
        }
    }
}

fn malformed(what: String) -> TransportError {
    malformed_from("server", what)
}

fn malformed_from(peer: &str, what: String) -> TransportError {
    TransportError::Malformed { peer: peer.into(), what }
}

fn expect_server(m: &[u8]) -> Result<(), VmError> {
    match ServerMsg::decode(m).map_err(malformed)? {
        ServerMsg::Empty => Ok(()),
        ServerMsg::Refused(why) => {
            Err(TransportError::Refused { peer: "server".into(), why }.into())
        }
        other => Err(malformed(format!("{other:?} out of turn")).into()),
    }
}
