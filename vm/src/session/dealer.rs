//! The dealer service. Every connection is one of:
//!
//! - a server's control link: the current epoch for its weights (a new one on request), and
//!   pings;
//! - a server's material link (its hello carries a fresh ticket): the dealer draws both
//!   parties' seeds for one inference, sends the server its seed and correction frames, and
//!   keeps the client's seed under the ticket — or, for a pruned program, waits for the
//!   ticket's client and makes the material during the run;
//! - a client's query link (its hello carries the ticket the server gave it): the dealer
//!   hands out that ticket's client seed once and forgets it.
//!
//! The roles are the certificates' (TLS), so no server can fetch a client seed. Connections
//! are bounded in number; unclaimed tickets are bounded and dropped with their server or
//! epoch; a live ticket's server waits at most the timeout for its client.

use super::random_id;
use super::wire::{FromDealer, Id, ToDealer, MAX_CONTROL};
use super::NetOptions;
use crate::ahead::{Ahead, Plan};
use crate::dealer::{Base, Dealer};
use crate::error::VmError;
use crate::net::hello::{answer, hex, Hello};
use crate::net::role::Role;
use crate::net::tcp::{admit, Conn};
use crate::net::{Expect, TransportError, LENGTH_TIMEOUT};
use crate::prg::{Prg, Seed};
use std::collections::{HashMap, VecDeque};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use veil_isa::Program;

/// Most connections the dealer handles at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Most client seeds waiting for their client.
pub const MAX_TICKETS: usize = 4096;

/// What the dealer reports.
#[derive(Debug)]
pub enum DealerEvent {
    /// A server asked for the epoch of its weights (`new`: one was started).
    Epoch {
        /// The epoch.
        id: Id,
        /// It was made now (first request, or a rotation).
        new: bool,
    },
    /// One inference's material was made.
    Made {
        /// Correction bytes sent to the server.
        bytes: u64,
        /// Time it took.
        time: Duration,
        /// Made during the run (a pruned program).
        live: bool,
    },
    /// A pruned program's material was made before its query (what does not depend on the
    /// lengths it reveals); reported when a query takes it.
    Ahead {
        /// Bytes of the frames kept, at the maximum length.
        bytes: u64,
        /// Time it took.
        time: Duration,
    },
    /// A pruned program's material for the next query is made and waiting (what a query
    /// then takes is reported again as [`DealerEvent::Ahead`]).
    AheadReady {
        /// Bytes of the frames kept, at the maximum length.
        bytes: u64,
        /// Time it took.
        time: Duration,
    },
    /// A client fetched its seed.
    Handed,
    /// A connection was refused or failed.
    Failed(VmError),
}

struct EpochRec {
    id: Id,
    seed: Seed,
    base: Mutex<Option<Arc<Base>>>,
    /// A pruned program's next inference, made before its query.
    ahead: Arc<AheadSlot>,
}

/// One inference of a pruned program's material made ahead ([`Ahead`]), or being made.
#[derive(Default)]
struct AheadSlot {
    state: Mutex<AheadState>,
    changed: Condvar,
}

#[derive(Default)]
enum AheadState {
    #[default]
    Idle,
    Making,
    Ready(Box<Ahead>, Duration),
    Failed(String),
}

struct Ticket {
    id: Id,
    epoch: Id,
    instance: Id,
    client: Seed,
}

/// A pruned program's server waiting for its ticket's client.
struct LiveWait {
    /// Where the client's length stream goes, to the thread dealing for the server.
    client: std::sync::mpsc::Sender<Conn>,
    epoch: Arc<EpochRec>,
    seeds: [Seed; 2],
    since: Instant,
}

struct State {
    prog: Arc<Program>,
    /// The current epoch per weights digest.
    epochs: Mutex<HashMap<[u8; 32], Arc<EpochRec>>>,
    tickets: Mutex<VecDeque<Ticket>>,
    live: Mutex<HashMap<Id, LiveWait>>,
    connections: AtomicUsize,
    made: AtomicUsize,
    /// The sockets of open connections, to cut when the dealer stops.
    open: Mutex<HashMap<u64, TcpStream>>,
    /// A pruned program's plan of what is made before the query (`None`: everything live).
    plan: Option<Arc<Plan>>,
    /// Events of the background threads that make material ahead, reported by the accept
    /// loop (the callback is borrowed by the loop's scope, those threads outlive no scope).
    background: Arc<Mutex<Vec<DealerEvent>>>,
}

impl State {
    fn epoch_by_id(&self, id: &Id) -> Option<Arc<EpochRec>> {
        self.epochs.lock().expect("epochs").values().find(|e| &e.id == id).cloned()
    }

    fn base(&self, e: &EpochRec) -> Result<Arc<Base>, VmError> {
        let mut b = e.base.lock().expect("base");
        if let Some(b) = b.as_ref() {
            return Ok(b.clone());
        }
        let made = Arc::new(Base::new(&self.prog, e.seed)?);
        *b = Some(made.clone());
        Ok(made)
    }
}

/// Accepts parties on `listener` and serves them (see the module docs) until it has made
/// `max_inferences` inferences' material, if given, or `stop` is set.
pub fn deal(
    listener: &TcpListener,
    prog: Arc<Program>,
    opts: &NetOptions,
    max_inferences: Option<usize>,
    stop: &AtomicBool,
    on_event: impl Fn(DealerEvent) + Send + Sync,
) -> Result<(), VmError> {
    veil_isa::validate(&prog)?;
    if let Some(why) = crate::dealer::epoch_setup_problem(&prog) {
        return Err(VmError::Dealer { section: "setup", index: 0, name: "setup", msg: why });
    }
    let state = State {
        epochs: Mutex::new(HashMap::new()),
        tickets: Mutex::new(VecDeque::new()),
        live: Mutex::new(HashMap::new()),
        connections: AtomicUsize::new(0),
        made: AtomicUsize::new(0),
        open: Mutex::new(HashMap::new()),
        plan: (prog.dynamic.is_some() && opts.ahead).then(|| Arc::new(Plan::new(&prog))),
        prog,
        background: Arc::default(),
    };
    let (state, on_event) = (&state, &on_event);
    listener.set_nonblocking(true).map_err(|e| io("listening", e))?;
    std::thread::scope(|scope| {
        let mut next_key = 0u64;
        loop {
            if stop.load(Ordering::Relaxed)
                || max_inferences.is_some_and(|m| state.made.load(Ordering::Relaxed) >= m)
            {
                break;
            }
            expire_live(state, opts.timeout);
            for ev in std::mem::take(&mut *state.background.lock().expect("background")) {
                on_event(ev);
            }
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => {
                    on_event(DealerEvent::Failed(io("accepting", e)));
                    continue;
                }
            };
            let _ = stream.set_nonblocking(false);
            if state.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                on_event(DealerEvent::Failed(
                    TransportError::Refused {
                        peer: "party".into(),
                        why: format!("{MAX_CONNECTIONS} connections already open"),
                    }
                    .into(),
                ));
                continue;
            }
            state.connections.fetch_add(1, Ordering::Relaxed);
            let key = next_key;
            next_key += 1;
            if let Ok(c) = stream.try_clone() {
                state.open.lock().expect("open").insert(key, c);
            }
            scope.spawn(move || {
                if let Err(e) = connection(state, stream, opts, on_event) {
                    on_event(DealerEvent::Failed(e));
                }
                state.open.lock().expect("open").remove(&key);
                state.connections.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Open links end with the scope: a dealing thread waiting for its client stops when
        // the client's slot goes, the others are cut below.
        state.live.lock().expect("live").clear();
        for (_, s) in state.open.lock().expect("open").iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    Ok(())
}

fn io(what: &str, e: std::io::Error) -> VmError {
    TransportError::Io { peer: "party".into(), during: format!(" {what}"), os: e }.into()
}

fn expire_live(state: &State, timeout: Duration) {
    let mut live = state.live.lock().expect("live");
    // A dropped slot stops the thread dealing for its server.
    live.retain(|_, w| w.since.elapsed() < timeout);
}

fn connection(
    state: &State,
    stream: TcpStream,
    opts: &NetOptions,
    on_event: &(impl Fn(DealerEvent) + Sync),
) -> Result<(), VmError> {
    let timeout = opts.timeout;
    let mut link = admit(stream, opts.tls.as_ref(), &[Role::Client, Role::Server], timeout)?;
    let mine = Hello { role: Role::Dealer, session: [0; 16], program: state.prog.hash() };
    let theirs = answer(&mut link, mine, &[Role::Client, Role::Server], timeout)?;
    let peer = theirs.role.name();
    let mut conn = Conn::new(link, peer, timeout)?;
    match theirs.role {
        Role::Client => hand_out(state, conn, theirs.session, on_event),
        _ => {
            let first = conn.recv(Expect::AtMost(MAX_CONTROL))?;
            let req = ToDealer::decode(&first)
                .map_err(|what| TransportError::Malformed { peer: "server".into(), what })?;
            match req {
                ToDealer::Material { epoch, live, instance } => {
                    material(state, conn, theirs.session, epoch, live, instance, on_event)
                }
                req => control(state, conn, theirs.session, req, on_event),
            }
        }
    }
}

fn refuse(conn: &mut Conn, why: &str) -> Result<(), VmError> {
    conn.send(&FromDealer::Refused(why.to_string()).encode(), true)?;
    Err(TransportError::Refused { peer: "dealer (this side)".into(), why: why.into() }.into())
}

/// A server's control link: epochs and pings until it closes; its tickets go with it.
fn control(
    state: &State,
    mut conn: Conn,
    instance: Id,
    mut req: ToDealer,
    on_event: &(impl Fn(DealerEvent) + Sync),
) -> Result<(), VmError> {
    // An authenticated server's link may idle between pings (it pings when idle, not while
    // it receives material): wait long, bounded.
    conn.set_timeout(LENGTH_TIMEOUT)?;
    let r = loop {
        let answer = match req {
            ToDealer::Epoch { digest, rotate } => {
                let mut epochs = state.epochs.lock().expect("epochs");
                let new = rotate || !epochs.contains_key(&digest);
                if new {
                    let old = epochs.insert(
                        digest,
                        Arc::new(EpochRec {
                            id: random_id(),
                            seed: Prg::random_seed(),
                            base: Mutex::new(None),
                            ahead: Arc::default(),
                        }),
                    );
                    // The old epoch's seed is forgotten, and with it every ticket made for it.
                    if let Some(old) = old {
                        state.tickets.lock().expect("tickets").retain(|t| t.epoch != old.id);
                    }
                }
                let e = epochs[&digest].clone();
                drop(epochs);
                start_ahead(state, &e);
                on_event(DealerEvent::Epoch { id: e.id, new });
                FromDealer::Epoch { id: e.id, seed: e.seed }
            }
            ToDealer::Ping => FromDealer::Pong,
            ToDealer::Material { .. } => {
                break refuse(&mut conn, "material is asked for on a connection of its own");
            }
        };
        if let Err(e) = conn.send(&answer.encode(), true) {
            break Err(e.into());
        }
        match conn.recv(Expect::AtMost(MAX_CONTROL)) {
            Ok(m) => match ToDealer::decode(&m) {
                Ok(r) => req = r,
                Err(what) => {
                    break Err(TransportError::Malformed { peer: "server".into(), what }.into())
                }
            },
            Err(TransportError::Closed { .. }) => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };
    state.tickets.lock().expect("tickets").retain(|t| t.instance != instance);
    r
}

/// A server's material link for `ticket`.
fn material(
    state: &State,
    mut conn: Conn,
    ticket: Id,
    epoch: Id,
    live: bool,
    instance: Id,
    on_event: &(impl Fn(DealerEvent) + Sync),
) -> Result<(), VmError> {
    let Some(e) = state.epoch_by_id(&epoch) else {
        return refuse(
            &mut conn,
            &format!("epoch {}… is not current (rotated, or another dealer's)", hex(&epoch[..4])),
        );
    };
    if live != state.prog.dynamic.is_some() {
        return refuse(&mut conn, "live material is for pruned programs only, and they need it");
    }
    if live {
        let full = {
            let waiting = state.live.lock().expect("live");
            waiting.len() >= MAX_TICKETS || waiting.contains_key(&ticket)
        };
        if full {
            return refuse(&mut conn, "too many pruned inferences waiting for their clients");
        }
        // The server learns its seed now (it tells its client the ticket only after); what
        // was made ahead comes once the client is here, the rest as the run reveals lengths.
        let ahead = take_ahead(state, &e, on_event);
        let seeds = match &ahead {
            Some(a) => a.seeds,
            None => [Prg::random_seed(), Prg::random_seed()],
        };
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut waiting = state.live.lock().expect("live");
            if waiting.len() >= MAX_TICKETS || waiting.contains_key(&ticket) {
                drop(waiting);
                return refuse(&mut conn, "too many pruned inferences waiting for their clients");
            }
            let w = LiveWait { client: tx, epoch: e.clone(), seeds, since: Instant::now() };
            waiting.insert(ticket, w);
        }
        conn.send(&FromDealer::Seed(seeds[1]).encode(), true)?;
        return live_material(state, conn, e, seeds, ahead, rx, on_event);
    }
    let base = state.base(&e)?;
    let t0 = Instant::now();
    let seeds = [Prg::random_seed(), Prg::random_seed()];
    conn.send(&FromDealer::Seed(seeds[1]).encode(), false)?;
    let prog = state.prog.clone();
    let mut d = Dealer::new(&prog, base, seeds, Box::new(conn));
    d.deal_body()?;
    {
        // The ticket exists before the server sees the end of its material, so the client
        // the server hands it to finds it.
        let mut t = state.tickets.lock().expect("tickets");
        if t.len() >= MAX_TICKETS {
            t.pop_front();
        }
        t.push_back(Ticket { id: ticket, epoch, instance, client: seeds[0] });
    }
    d.finish()?;
    state.made.fetch_add(1, Ordering::Relaxed);
    on_event(DealerEvent::Made { bytes: d.bytes(), time: t0.elapsed(), live: false });
    Ok(())
}

/// A client's query link: its ticket's seed, once; for a pruned program, the whole live
/// inference with the waiting server.
fn hand_out(
    state: &State,
    mut conn: Conn,
    ticket: Id,
    on_event: &(impl Fn(DealerEvent) + Sync),
) -> Result<(), VmError> {
    let found = {
        let mut t = state.tickets.lock().expect("tickets");
        t.iter().position(|x| x.id == ticket).and_then(|i| t.remove(i))
    };
    if let Some(t) = found {
        if state.epoch_by_id(&t.epoch).is_none() {
            return refuse(&mut conn, "that ticket's epoch is over");
        }
        conn.send(&FromDealer::Seed(t.client).encode(), true)?;
        on_event(DealerEvent::Handed);
        return Ok(());
    }
    let Some(w) = state.live.lock().expect("live").remove(&ticket) else {
        return refuse(
            &mut conn,
            "no material for that ticket (used already, or not this dealer's)",
        );
    };
    if state.epoch_by_id(&w.epoch.id).is_none() {
        return refuse(&mut conn, "that ticket's epoch is over");
    }
    conn.send(&FromDealer::Seed(w.seeds[0]).encode(), true)?;
    on_event(DealerEvent::Handed);
    // The client reports each length the run reveals; the first comes after whole layers.
    conn.set_timeout(LENGTH_TIMEOUT)?;
    // The thread dealing for the server takes it from here (gone: it failed or timed out).
    let _ = w.client.send(conn);
    Ok(())
}

/// One inference of a pruned program's material for the server on `server`: what was made
/// ahead at once (its first segment needs no length), the rest as the client, whose length
/// stream arrives on `client` once it fetched its seed, reveals each length.
fn live_material(
    state: &State,
    server: Conn,
    e: Arc<EpochRec>,
    seeds: [Seed; 2],
    ahead: Option<Box<Ahead>>,
    client: std::sync::mpsc::Receiver<Conn>,
    on_event: &(impl Fn(DealerEvent) + Sync),
) -> Result<(), VmError> {
    let base = state.base(&e)?;
    let t0 = Instant::now();
    let prog = state.prog.clone();
    let mut d = match ahead {
        Some(a) => Dealer::with_ahead(&prog, base, *a, Box::new(server))?,
        None => Dealer::new(&prog, base, seeds, Box::new(server)),
    };
    d.set_lengths(Box::new(ClientLengths { rx: Some(client), conn: None }));
    let dealt = d.deal_body().and_then(|()| d.finish());
    // The next inference's material, made once the client is done with this one so as not
    // to slow it down.
    if dealt.is_ok() && state.plan.is_some() {
        d.await_client_end();
    }
    start_ahead(state, &e);
    dealt?;
    state.made.fetch_add(1, Ordering::Relaxed);
    on_event(DealerEvent::Made { bytes: d.bytes(), time: t0.elapsed(), live: true });
    Ok(())
}

/// The client's length stream, once the client is here.
struct ClientLengths {
    rx: Option<std::sync::mpsc::Receiver<Conn>>,
    conn: Option<Conn>,
}

impl ClientLengths {
    fn conn(&mut self) -> Result<&mut Conn, TransportError> {
        if self.conn.is_none() {
            let rx = self.rx.take();
            let c = rx.and_then(|rx| rx.recv().ok()).ok_or_else(|| TransportError::Closed {
                peer: "client".into(),
                during: " (it never fetched its seed, or its ticket expired)".into(),
            })?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }
}

impl crate::net::FrameSource for ClientLengths {
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        self.conn()?.recv_frame()
    }
    fn recv_exact(&mut self, len: usize) -> Result<Vec<u8>, TransportError> {
        self.conn()?.recv_exact(len)
    }
    fn bytes(&self) -> u64 {
        self.conn.as_ref().map_or(0, crate::net::FrameSource::bytes)
    }
}

/// Starts making the epoch's next pruned inference ahead of its query, in the background,
/// unless one is made or being made (or the program is not pruned).
fn start_ahead(state: &State, e: &Arc<EpochRec>) {
    let Some(plan) = state.plan.clone() else { return };
    {
        let mut st = e.ahead.state.lock().expect("ahead");
        if matches!(*st, AheadState::Making | AheadState::Ready(..)) {
            return;
        }
        *st = AheadState::Making;
    }
    let slot = e.ahead.clone();
    let base = match state.base(e) {
        Ok(b) => b,
        Err(err) => {
            *slot.state.lock().expect("ahead") = AheadState::Failed(err.to_string());
            slot.changed.notify_all();
            return;
        }
    };
    let prog = state.prog.clone();
    let events = state.background.clone();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let seeds = [Prg::random_seed(), Prg::random_seed()];
        let made = Ahead::make(&prog, base, seeds, plan);
        *slot.state.lock().expect("ahead") = match made {
            Ok(a) => {
                let (bytes, time) = (a.bytes(), t0.elapsed());
                events.lock().expect("background").push(DealerEvent::AheadReady { bytes, time });
                AheadState::Ready(Box::new(a), time)
            }
            Err(err) => AheadState::Failed(err.to_string()),
        };
        slot.changed.notify_all();
    });
}

/// The epoch's pruned inference made ahead, waiting for it while it is being made; `None`
/// (the material is then made live) for a program that is not pruned, when making it
/// failed (reported), or when it is not ready within the timeout.
fn take_ahead(
    state: &State,
    e: &Arc<EpochRec>,
    on_event: &(impl Fn(DealerEvent) + Sync),
) -> Option<Box<Ahead>> {
    state.plan.as_ref()?;
    start_ahead(state, e);
    let deadline = Instant::now() + crate::net::DEFAULT_TIMEOUT;
    let mut st = e.ahead.state.lock().expect("ahead");
    loop {
        match std::mem::take(&mut *st) {
            AheadState::Ready(a, time) => {
                on_event(DealerEvent::Ahead { bytes: a.bytes(), time });
                return Some(a);
            }
            AheadState::Making => {
                *st = AheadState::Making;
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                st = e.ahead.changed.wait_timeout(st, left).expect("ahead").0;
            }
            AheadState::Failed(why) => {
                on_event(DealerEvent::Failed(VmError::Dealer {
                    section: "body",
                    index: 0,
                    name: "body",
                    msg: format!("making the material ahead failed, dealing live: {why}"),
                }));
                return None;
            }
            AheadState::Idle => return None,
        }
    }
}
