//! The server's pool of dealer material made ahead of queries: each entry is one inference's
//! correction stream, received from the dealer while the server was idle and kept in a file
//! (BERT-base: 2.5 GB each; memory holds none of it), read back a frame at a time when a
//! query uses it. An entry belongs to an epoch and is used once; its file is unlinked as soon
//! as it is complete, so a crash leaves nothing behind.

use super::wire::Id;
use crate::net::frame::{read_vec, Paced};
use crate::net::{Expect, FrameSource, TransportError, MAX_MESSAGE};
use crate::prg::Seed;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use veil_isa::cost::FRAME_HEADER;

impl Paced for File {
    fn set_deadline(&mut self, _: Option<Instant>) {}
}

/// One inference's server material, ready.
pub struct Entry {
    /// The ticket the client fetches its seed with.
    pub ticket: Id,
    /// The epoch it was made against.
    pub epoch: Id,
    /// The server's PRG seed.
    pub seed: Seed,
    /// The correction frames (unlinked file, at its start).
    pub file: File,
    /// Its size in bytes.
    pub bytes: u64,
    /// How long the dealer took to make it.
    pub made_in: Duration,
}

/// A correction stream read back from a pool file.
pub struct FileSource {
    r: BufReader<File>,
    seq: u32,
    bytes: u64,
}

impl FileSource {
    /// Reads the frames of `file` from its start.
    pub fn new(mut file: File) -> std::io::Result<FileSource> {
        file.rewind()?;
        Ok(FileSource { r: BufReader::with_capacity(1 << 20, file), seq: 0, bytes: 0 })
    }

    fn read(&mut self, expect: Expect) -> Result<Vec<u8>, TransportError> {
        let f = read_vec(&mut self.r, self.seq, "material file", Duration::ZERO, expect)?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += FRAME_HEADER + f.len() as u64;
        Ok(f)
    }
}

impl FrameSource for FileSource {
    fn recv_frame(&mut self) -> Result<Vec<u8>, TransportError> {
        self.read(Expect::AtMost(MAX_MESSAGE))
    }
    fn recv_exact(&mut self, len: usize) -> Result<Vec<u8>, TransportError> {
        self.read(Expect::Exactly(len as u64))
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// What taking an entry gave.
pub enum Take<'a> {
    /// An entry of the asked epoch, and the mark that its query is running (held until the
    /// query's online phase ends, so no material is made against it meanwhile).
    Ready(Entry, Running<'a>),
    /// None within the wait (the dealer is still making one).
    Empty,
    /// The pool serves another epoch now (the session must end: rotated).
    Stale,
}

struct State {
    epoch: Option<Id>,
    ready: VecDeque<Entry>,
    /// Queries waiting for an entry.
    waiting: usize,
    /// Queries running their online phase.
    running: usize,
    /// When the last online phase ended.
    last_end: Instant,
}

/// How long the server must have been idle before it asks for material it does not wait
/// for: a client that runs queries back to back starts the next within milliseconds, and
/// material made in that gap would run against the next query.
pub const QUIET: Duration = Duration::from_secs(1);

/// Entries ready for queries, refilled by the server's dealer thread.
pub struct Pool {
    /// How many entries to keep ready.
    pub target: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Pool {
    /// An empty pool that keeps `target` entries ready.
    pub fn new(target: usize) -> Pool {
        Pool {
            target,
            state: Mutex::new(State {
                epoch: None,
                ready: VecDeque::new(),
                waiting: 0,
                running: 0,
                last_end: Instant::now(),
            }),
            changed: Condvar::new(),
        }
    }

    /// Drops every entry and serves `epoch` from now on (`None`: no dealer, nothing served).
    pub fn reset(&self, epoch: Option<Id>) {
        let mut s = self.state.lock().expect("pool");
        s.epoch = epoch;
        s.ready.clear();
        self.changed.notify_all();
    }

    /// The epoch served.
    pub fn epoch(&self) -> Option<Id> {
        self.state.lock().expect("pool").epoch
    }

    /// Adds a finished entry (dropped if the epoch changed meanwhile).
    pub fn add(&self, e: Entry) {
        let mut s = self.state.lock().expect("pool");
        if s.epoch == Some(e.epoch) {
            s.ready.push_back(e);
            self.changed.notify_all();
        }
    }

    /// Entries ready now.
    pub fn ready(&self) -> usize {
        self.state.lock().expect("pool").ready.len()
    }

    /// Whether the dealer thread should make an entry now: the pool is short, and either the
    /// server is idle (no query running, none for [`QUIET`]: material is made while idle, not
    /// against a query's time) or a query waits for it.
    pub fn wants(&self) -> bool {
        let s = self.state.lock().expect("pool");
        let idle = s.running == 0 && s.last_end.elapsed() >= QUIET;
        s.epoch.is_some()
            && (s.ready.len() < self.target || s.waiting > s.ready.len())
            && (idle || s.waiting > 0)
    }

    /// Waits up to `d` for a change that may make [`Self::wants`] true.
    pub fn wait_change(&self, d: Duration) {
        let s = self.state.lock().expect("pool");
        let _ = self.changed.wait_timeout(s, d);
    }

    /// Takes an entry of `epoch`, waiting up to `wait` for one.
    pub fn take(&self, epoch: Id, wait: Duration) -> Take<'_> {
        let deadline = Instant::now() + wait;
        let mut s = self.state.lock().expect("pool");
        s.waiting += 1;
        self.changed.notify_all();
        let r = loop {
            if s.epoch != Some(epoch) {
                break Take::Stale;
            }
            if let Some(e) = s.ready.pop_front() {
                s.running += 1;
                break Take::Ready(e, Running(self));
            }
            let now = Instant::now();
            if now >= deadline {
                break Take::Empty;
            }
            s = self.changed.wait_timeout(s, deadline - now).expect("pool").0;
        };
        s.waiting -= 1;
        self.changed.notify_all();
        r
    }

    /// Marks a query's online phase as running until the guard drops.
    pub fn running(&self) -> Running<'_> {
        self.state.lock().expect("pool").running += 1;
        Running(self)
    }
}

/// A query's online phase in progress (see [`Pool::running`]).
pub struct Running<'a>(&'a Pool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("pool");
        s.running -= 1;
        s.last_end = Instant::now();
        self.0.changed.notify_all();
    }
}
