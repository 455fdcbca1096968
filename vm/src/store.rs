//! A party's buffers: each either its own array, or a view of data shared read-only with
//! other sessions (a server's encoded weights) or of a zero region (the other party's private
//! buffers, never written here). A value's array is taken from a pool when a step first
//! writes it and returned after its last use ([`veil_isa::lifetime`]), so a session holds its
//! live values, not the whole program; the pool keeps arrays for reuse, so the steady state
//! allocates and faults in nothing.

use crate::error::VmError;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// One buffer's storage.
#[derive(Debug)]
pub enum Slot {
    /// This party's own array (empty: not allocated).
    Own(Vec<u64>),
    /// The first `len` words of a shared array (weights, or zeros); copied on first write.
    Shared(Arc<Vec<u64>>, usize),
    /// `len` words at word `at` of a read-only file mapping (a client's cached masked
    /// weights); copied on first write.
    Mapped(Arc<memmap2::Mmap>, usize, usize),
}

/// The words of a mapping from word `at`, `len` of them (the caller checked the range).
pub fn words_of(m: &memmap2::Mmap, at: usize, len: usize) -> &[u64] {
    let bytes = &m[8 * at..8 * (at + len)];
    // SAFETY: the cache reader checked the range lies in the mapping and starts 8-aligned
    // (a mapping is page-aligned and the file keeps every array at a multiple of 8 bytes);
    // any bytes are a valid u64 (little-endian hosts only: see the cache reader).
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u64, len) }
}

impl Default for Slot {
    fn default() -> Slot {
        Slot::Own(Vec::new())
    }
}

impl Deref for Slot {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        match self {
            Slot::Own(v) => v,
            Slot::Shared(a, n) => &a[..*n],
            Slot::Mapped(m, at, n) => words_of(m, *at, *n),
        }
    }
}

impl DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut [u64] {
        if !matches!(self, Slot::Own(_)) {
            *self = Slot::Own(self.to_vec());
        }
        match self {
            Slot::Own(v) => v,
            _ => unreachable!("made own above"),
        }
    }
}

impl Slot {
    /// The array to write into (a shared one is copied first).
    pub fn into_vec(self) -> Vec<u64> {
        match self {
            Slot::Own(v) => v,
            other => other.to_vec(),
        }
    }

    /// Bytes of memory this slot owns.
    pub fn owned_bytes(&self) -> u64 {
        match self {
            Slot::Own(v) => 8 * v.capacity() as u64,
            Slot::Shared(..) | Slot::Mapped(..) => 0,
        }
    }

    /// Shortens the view to `words` (a pruned length).
    pub fn truncate(&mut self, words: usize) {
        match self {
            Slot::Own(v) => v.truncate(words),
            Slot::Shared(_, n) | Slot::Mapped(_, _, n) => *n = (*n).min(words),
        }
    }
}

/// Arrays returned after their value died, by capacity, for the next value.
#[derive(Default)]
pub struct Pool {
    free: BTreeMap<usize, Vec<Vec<u64>>>,
    bytes: u64,
}

impl Pool {
    /// An array of `len` words: a pooled one with enough capacity (at most twice, so a small
    /// value does not pin a large array), else a new one. Its contents are unspecified unless
    /// `zero`.
    fn take(&mut self, len: usize, zero: bool) -> (Vec<u64>, bool) {
        let hit = self.free.range_mut(len..=len.saturating_mul(2)).next().map(|(&c, _)| c);
        if let Some(cap) = hit {
            let list = self.free.get_mut(&cap).expect("listed");
            let mut v = list.pop().expect("non-empty lists only");
            if list.is_empty() {
                self.free.remove(&cap);
            }
            self.bytes -= 8 * cap as u64;
            // SAFETY-free resizing: shrink or grow within capacity; new words are zeroed by
            // `resize`, and the old ones are overwritten by the writer unless `zero`.
            v.truncate(len);
            v.resize(len, 0);
            if zero {
                v.fill(0);
            }
            return (v, true);
        }
        (vec![0u64; len], false)
    }

    fn give(&mut self, v: Vec<u64>) {
        if v.capacity() == 0 {
            return;
        }
        self.bytes += 8 * v.capacity() as u64;
        self.free.entry(v.capacity()).or_default().push(v);
    }
}

/// A party's buffers with their pool and what they hold.
pub struct Store {
    /// The buffers, by id.
    pub bufs: Vec<Slot>,
    pool: Pool,
    /// Bytes in own arrays, live or pooled.
    held: u64,
    /// The most `held` has been.
    peak: u64,
    /// Refuse to hold more than this.
    limit: u64,
}

impl Store {
    /// `n` empty buffers, holding at most `limit` bytes.
    pub fn new(n: usize, limit: u64) -> Store {
        Store {
            bufs: (0..n).map(|_| Slot::default()).collect(),
            pool: Pool::default(),
            held: 0,
            peak: 0,
            limit,
        }
    }

    fn charge(&mut self, bytes: u64, what: &str) -> Result<(), VmError> {
        if self.held + bytes > self.limit {
            return Err(VmError::Memory {
                need: self.held + bytes,
                limit: self.limit,
                what: what.to_string(),
            });
        }
        self.held += bytes;
        self.peak = self.peak.max(self.held);
        Ok(())
    }

    /// Gives buffer `b` an array of `len` words (zeroed when `zero`) unless it has one.
    pub fn ensure(&mut self, b: usize, len: usize, zero: bool) -> Result<(), VmError> {
        if len == 0 || !self.bufs[b].is_empty() {
            return Ok(());
        }
        let (v, pooled) = self.pool.take(len, zero);
        if pooled {
            self.pool_moved(v.capacity());
        } else {
            self.charge(8 * v.capacity() as u64, "a buffer")?;
        }
        self.bufs[b] = Slot::Own(v);
        Ok(())
    }

    fn pool_moved(&mut self, _cap: usize) {
        // A pooled array was already counted in `held`.
    }

    /// Returns buffer `b`'s array to the pool (its value is dead).
    pub fn free(&mut self, b: usize) {
        match std::mem::take(&mut self.bufs[b]) {
            Slot::Own(v) => self.pool.give(v),
            Slot::Shared(..) | Slot::Mapped(..) => {}
        }
    }

    /// Sets buffer `b` to `v` (loaded data), counting it; an array it replaces is dropped,
    /// not pooled (loads happen once; the pool is for the run's values).
    pub fn put_new(&mut self, b: usize, v: Vec<u64>) -> Result<(), VmError> {
        if let Slot::Own(old) = std::mem::take(&mut self.bufs[b]) {
            self.held -= 8 * old.capacity() as u64;
        }
        self.charge(8 * v.capacity() as u64, "loaded data")?;
        self.bufs[b] = Slot::Own(v);
        Ok(())
    }

    /// Makes buffer `b` a view of shared data.
    pub fn share(&mut self, b: usize, data: Arc<Vec<u64>>, len: usize) {
        self.free(b);
        self.bufs[b] = Slot::Shared(data, len);
    }

    /// Makes buffer `b` a view of `len` words at word `at` of a file mapping (the caller
    /// checked the range).
    pub fn map(&mut self, b: usize, m: Arc<memmap2::Mmap>, at: usize, len: usize) {
        if let Slot::Own(old) = std::mem::take(&mut self.bufs[b]) {
            self.held -= 8 * old.capacity() as u64;
        }
        self.bufs[b] = Slot::Mapped(m, at, len);
    }

    /// Accounts for an array grown or made outside the pool (a write that copied shared data,
    /// a buffer regaining its pruned tail).
    pub fn recount(&mut self) {
        let own: u64 = self.bufs.iter().map(Slot::owned_bytes).sum();
        self.held = own + self.pool.bytes;
        self.peak = self.peak.max(self.held);
    }

    /// Bytes held now (live and pooled arrays).
    pub fn held(&self) -> u64 {
        self.held
    }

    /// The most it may hold.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The most held at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Empties the pool, returning its memory (a session between queries keeps it).
    pub fn release_pool(&mut self) {
        self.held -= self.pool.bytes;
        self.pool = Pool::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_array_is_reused_and_the_limit_holds() {
        let mut s = Store::new(3, 8 * 100);
        s.ensure(0, 40, false).unwrap();
        s.bufs[0][5] = 7;
        let held = s.held();
        s.free(0);
        // Reused for a value of 30 words (capacity 40 ≤ 2·30): nothing new is held.
        s.ensure(1, 30, true).unwrap();
        assert_eq!(s.held(), held);
        assert!(s.bufs[1].iter().all(|&x| x == 0), "zeroed on request");
        // Too small a value for that array, and too much memory for the limit.
        s.ensure(2, 70, false).unwrap_err();
        let shared = Arc::new(vec![1u64; 10]);
        s.share(2, shared, 4);
        assert_eq!(&s.bufs[2][..], &[1, 1, 1, 1]);
        s.bufs[2][0] = 9;
        assert!(matches!(s.bufs[2], Slot::Own(_)), "a write copies");
    }
}
