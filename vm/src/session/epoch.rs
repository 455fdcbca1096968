//! Epochs: the server's weights are masked once per epoch, not per session. The dealer keeps
//! the epoch's seed; the server runs the setup once for it, records the message it sends
//! (the masked weights, `F = W + B`) to a file and replays it to each client that does not
//! hold it yet; a returning client keeps it in its cache, keyed by program and epoch, and
//! skips the setup round.
//!
//! Why reuse is as safe as a fresh mask per session: `F` is uniformly random to anyone who
//! does not know `B`, and only the dealer and the server know `B`. Every client of the epoch
//! receives the same `F`, so clients together learn nothing one of them does not; each
//! inference still masks the client's activation with fresh dealer randomness (`x − A`) and
//! gets fresh shares of `A·B`, so nothing of one query is reused for another. What a rotation
//! protects against: a later compromise of the dealer's state (its epoch seeds) — after a
//! rotation the dealer forgets the old seed, so masked weights a client kept from an older
//! epoch can no longer be unmasked with it.

use super::wire::Id;
use crate::error::VmError;
use crate::interp::{PartyVm, SharedWeights};
use crate::material::Material;
use crate::net::{CommStats, Transport, TransportError};
use crate::prg::Seed;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use veil_isa::{Buf, Instr, Party, Program};

/// Whether the setup has a round (a program whose weights are all public has none).
pub fn setup_has_round(p: &Program) -> bool {
    p.setup.iter().any(|i| matches!(i, Instr::Exchange {}))
}

/// A transport that records what the server sends in the setup to a file; the client's side
/// of that round is empty.
struct Recorder {
    w: BufWriter<File>,
    stats: CommStats,
    rounds: u64,
    written: u64,
}

impl Recorder {
    fn io(e: std::io::Error) -> TransportError {
        TransportError::Io {
            peer: "recording".into(),
            during: " writing the masked weights".into(),
            os: e,
        }
    }
}

impl Transport for Recorder {
    fn exchange(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        self.rounds += 1;
        if self.rounds > 1 {
            return Err(TransportError::Malformed {
                peer: "setup".into(),
                what: "a setup with more than one round cannot be recorded".into(),
            });
        }
        self.w.write_all(&msg).map_err(Recorder::io)?;
        // The one round: flushed here so that a full disk is this run's error.
        self.w.flush().map_err(Recorder::io)?;
        self.written += msg.len() as u64;
        self.stats.record(self.written, 0);
        Ok(Vec::new())
    }
    fn stats(&self) -> CommStats {
        self.stats
    }
    fn send_part(&mut self, part: &[u8]) -> Result<bool, TransportError> {
        self.w.write_all(part).map_err(Recorder::io)?;
        self.written += part.len() as u64;
        Ok(true)
    }
}

/// The server's side of an epoch.
pub struct Epoch {
    /// Its id (clients key their cache by it).
    pub id: Id,
    /// The recorded setup message and its length (none when the setup has no round), in a
    /// file unlinked as soon as it was created: nothing of it outlives the server, even one
    /// stopped by a signal.
    pub setup: Option<(Arc<File>, u64)>,
    /// What the server keeps from the setup for the body (nothing for weight masks).
    pub kept: Vec<(Buf, Vec<u64>)>,
}

impl Epoch {
    /// Runs the setup once for epoch `id` with the server's epoch `seed` over the shared
    /// `weights`, recording the message to an unlinked file created in `dir`.
    pub fn prepare(
        prog: &Program,
        weights: &SharedWeights,
        id: Id,
        seed: Seed,
        dir: &Path,
        max_memory: u64,
    ) -> Result<Epoch, VmError> {
        let path = dir.join(format!(
            "veil-epoch-{}-{}.setup",
            std::process::id(),
            crate::net::tcp::hex(&id[..8])
        ));
        let file = unlinked_file(&path).map_err(|e| io_err(&path, e))?;
        let reader = file.try_clone().map_err(|e| io_err(&path, e))?;
        let rec = Recorder {
            w: BufWriter::with_capacity(1 << 20, file),
            stats: CommStats::default(),
            rounds: 0,
            written: 0,
        };
        let mut vm = PartyVm::new(
            prog,
            Party::Server,
            Material::new(Party::Server, seed, None),
            Box::new(rec),
            max_memory,
        )?;
        vm.share_weights(weights);
        let r = vm.run_setup();
        let kept: Vec<(Buf, Vec<u64>)> =
            vm.setup_results().into_iter().map(|(b, v)| (b, v.to_vec())).collect();
        let len = vm.report().setup.sent.saturating_sub(veil_isa::cost::FRAME_HEADER);
        // Dropping the VM flushes the recorder; its errors surface as the run's.
        drop(vm);
        r?;
        let setup = setup_has_round(prog).then(|| (Arc::new(reader), len));
        Ok(Epoch { id, setup, kept })
    }

    /// The recorded message, as a reader of its own for one replay (replays of concurrent
    /// sessions read the one file at their own positions).
    pub fn replay(&self) -> Option<(Box<dyn Read + Send>, u64)> {
        let (f, n) = self.setup.as_ref()?;
        Some((Box::new(ReadAt { file: f.clone(), pos: 0 }) as Box<dyn Read + Send>, *n))
    }
}

/// A reader of a shared file at a position of its own (positioned reads: no shared cursor).
struct ReadAt {
    file: Arc<File>,
    pos: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.pos)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(&*self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn io_err(path: &Path, e: std::io::Error) -> VmError {
    VmError::Transport(TransportError::Io {
        peer: "local disk".into(),
        during: format!(" at {}", path.display()),
        os: e,
    })
}

/// A private file (see [`private_file`]) created at `path` and unlinked at once: its data lives
/// as long as its handles, so nothing of it outlives the process, however the process ends.
pub fn unlinked_file(path: &Path) -> std::io::Result<File> {
    let file = private_file(path)?;
    std::fs::remove_file(path)?;
    Ok(file)
}

/// Creates `path` for writing, readable by this user only, failing if it exists.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

const CACHE_MAGIC: &[u8; 8] = b"VEILMSK2";

/// A cache file's masked weights, mapped read-only: each buffer's words at a word offset of
/// the mapping (nothing is copied; the pages come from the file as the body reads them).
pub struct Cached {
    /// The mapping.
    pub map: std::sync::Arc<memmap2::Mmap>,
    /// Buffer, word offset, words.
    pub bufs: Vec<(Buf, usize, usize)>,
}

/// The client's cache of masked weights: one file per program and epoch.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    fn path(&self, prog: &Program, epoch: &Id) -> PathBuf {
        let h = prog.hash();
        self.dir.join(format!(
            "{}-{}.masked",
            crate::net::tcp::hex(&h[..16]),
            crate::net::tcp::hex(&epoch[..8])
        ))
    }

    /// The masked weights of `prog` for `epoch`, if held and whole (a damaged file is
    /// removed and counts as a miss).
    pub fn load(&self, prog: &Program, epoch: &Id) -> Option<Cached> {
        if cfg!(target_endian = "big") {
            return None;
        }
        let path = self.path(prog, epoch);
        let f = File::open(&path).ok()?;
        match map_cache(&f, prog, epoch) {
            Ok(v) => Some(v),
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps `data` as the masked weights of `prog` for `epoch` (written to a temporary
    /// file and renamed, so a reader never sees half a file; a checksum catches a file the
    /// disk lost part of), and drops the program's files of other epochs, which no server
    /// uses any more.
    pub fn store(&self, prog: &Program, epoch: &Id, data: &[(Buf, &[u64])]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(prog, epoch);
        let tmp = path.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let r = (|| {
            let mut w = BufWriter::with_capacity(1 << 20, private_file(&tmp)?);
            // 64 bytes of header and 16 per buffer keep every array 8-aligned for mapping.
            w.write_all(CACHE_MAGIC)?;
            w.write_all(&prog.hash())?;
            w.write_all(epoch)?;
            w.write_all(&(data.len() as u32).to_le_bytes())?;
            w.write_all(&[0; 4])?;
            let mut sum = Checksum::default();
            for (b, v) in data {
                w.write_all(&b.0.to_le_bytes())?;
                w.write_all(&[0; 4])?;
                w.write_all(&(v.len() as u64).to_le_bytes())?;
                write_words(&mut w, v)?;
                sum.add(v);
            }
            w.write_all(&sum.value().to_le_bytes())?;
            w.into_inner().map_err(|e| e.into_error())?;
            std::fs::rename(&tmp, &path)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        let prefix = crate::net::tcp::hex(&prog.hash()[..16]);
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".masked") && p != path {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        Ok(())
    }
}

/// A 64-bit checksum of the cached words: a file damaged after it was written (a crash
/// before the data reached the disk) is a miss, never wrong weights.
/// Four independent lanes, so the mixing of one word does not wait for the previous one's.
#[derive(Default)]
struct Checksum([u64; 4]);

impl Checksum {
    fn add(&mut self, v: &[u64]) {
        let mix = |h: u64, x: u64| (h.rotate_left(5) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut chunks = v.chunks_exact(4);
        for c in &mut chunks {
            for (h, &x) in self.0.iter_mut().zip(c) {
                *h = mix(*h, x);
            }
        }
        for &x in chunks.remainder() {
            self.0[0] = mix(self.0[0], x);
        }
    }

    fn value(&self) -> u64 {
        self.0.iter().fold(0, |a, &h| (a.rotate_left(17) ^ h).wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
    }
}

/// Writes words little-endian in one pass.
fn write_words(w: &mut impl Write, v: &[u64]) -> std::io::Result<()> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: the words' bytes, read only.
        let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, 8 * v.len()) };
        w.write_all(bytes)
    }
    #[cfg(not(target_endian = "little"))]
    {
        for x in v {
            w.write_all(&x.to_le_bytes())?;
        }
        Ok(())
    }
}

fn map_cache(f: &File, prog: &Program, epoch: &Id) -> std::io::Result<Cached> {
    let bad = |w: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, w.to_string());
    // SAFETY: the file is this user's, written once and renamed into place; a concurrent
    // writer would rename a new file over it, leaving this mapping's inode unchanged.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(f)? };
    let word = |at: usize| -> std::io::Result<u64> {
        let b = map.get(at..at + 8).ok_or_else(|| bad("truncated"))?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if map.len() < 64
        || &map[..8] != CACHE_MAGIC
        || map[8..40] != prog.hash()
        || &map[40..56] != epoch
    {
        return Err(bad("another program or epoch"));
    }
    let n = u32::from_le_bytes(map[56..60].try_into().expect("4 bytes")) as usize;
    if n > prog.buffers.len() {
        return Err(bad("more buffers than the program has"));
    }
    let mut at = 64usize;
    let mut bufs = Vec::with_capacity(n);
    for _ in 0..n {
        let h = word(at)?;
        let b = (h & 0xffff_ffff) as usize;
        let words = word(at + 8)? as usize;
        let decl = prog.buffers.get(b).ok_or_else(|| bad("no such buffer"))?;
        if words != decl.kind.words(decl.len) {
            return Err(bad("a buffer of another length"));
        }
        at += 16;
        let end =
            words.checked_mul(8).and_then(|x| x.checked_add(at)).ok_or_else(|| bad("size"))?;
        if end + 8 > map.len() {
            return Err(bad("truncated"));
        }
        bufs.push((Buf(b as u32), at / 8, words));
        at = end;
    }
    if at + 8 != map.len() {
        return Err(bad("trailing bytes"));
    }
    let mut sum = Checksum::default();
    for &(_, w, len) in &bufs {
        sum.add(crate::store::words_of(&map, w, len));
    }
    if word(at)? != sum.value() {
        return Err(bad("damaged (checksum)"));
    }
    Ok(Cached { map: std::sync::Arc::new(map), bufs })
}
