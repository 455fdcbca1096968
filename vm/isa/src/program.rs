//! The program container: header, buffer table, constants, I/O declarations, instructions.
//!
//! File layout: the 8-byte magic `VEILVBC\0`, the format version (u32 LE), the SHA-256 of the
//! payload (32 bytes), then the payload. Loading checks magic, version and hash before decoding,
//! then [`crate::validate`] checks every instruction, so a corrupt or hostile file is rejected
//! with an error, never a panic or an out-of-bounds access.

use crate::operand::{Buf, Operand, Party, Reader, Writer};
use crate::ops::Instr;
use crate::DecodeError;
use sha2::{Digest, Sha256};
use std::fmt;

/// File magic.
pub const MAGIC: &[u8; 8] = b"VEILVBC\0";
/// Bytecode format version; bump on any change to the instruction list or the layout.
/// Version 2: every constant carries its [`ConstOrigin`].
/// Version 4: `dcase` (a final AND gate's cases as arithmetic shares).
pub const FORMAT_VERSION: u32 = 5;
/// Largest buffer, in elements, a program may declare (2^31).
pub const MAX_BUF_LEN: u32 = 1 << 31;

/// What a buffer holds and who holds it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Additive shares in Z_2^64: each party holds one.
    Share,
    /// A value both parties know.
    Public,
    /// A value only this party knows (the other holds zeros).
    Private(Party),
    /// XOR-shared packed bits.
    Bits,
    /// Public packed bits.
    PubBits,
}

impl Kind {
    /// True for kinds holding ring elements (not bits).
    pub fn is_ring(self) -> bool {
        matches!(self, Kind::Share | Kind::Public | Kind::Private(_))
    }

    /// True for kinds that are a valid additive sharing (share or private).
    pub fn is_share_like(self) -> bool {
        matches!(self, Kind::Share | Kind::Private(_))
    }

    /// True for bit kinds.
    pub fn is_bits(self) -> bool {
        matches!(self, Kind::Bits | Kind::PubBits)
    }

    /// Number of u64 words that hold `len` elements of this kind.
    pub fn words(self, len: u32) -> usize {
        if self.is_bits() {
            (len as usize).div_ceil(64)
        } else {
            len as usize
        }
    }

    fn code(self) -> u8 {
        match self {
            Kind::Share => 0,
            Kind::Public => 1,
            Kind::Private(Party::Client) => 2,
            Kind::Private(Party::Server) => 3,
            Kind::Bits => 4,
            Kind::PubBits => 5,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            0 => Kind::Share,
            1 => Kind::Public,
            2 => Kind::Private(Party::Client),
            3 => Kind::Private(Party::Server),
            4 => Kind::Bits,
            5 => Kind::PubBits,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Share => f.write_str("share"),
            Kind::Public => f.write_str("public"),
            Kind::Private(p) => write!(f, "private({p})"),
            Kind::Bits => f.write_str("bits"),
            Kind::PubBits => f.write_str("pubbits"),
        }
    }
}

/// A buffer declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufDecl {
    /// Kind.
    pub kind: Kind,
    /// Number of elements (bits for bit kinds).
    pub len: u32,
}

/// A public buffer initialised with constant data when the program is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstInit {
    /// The public buffer.
    pub buf: Buf,
    /// Its ring elements (fixed-point encoded by the compiler).
    pub data: Vec<u64>,
}

/// Where a constant's values come from. Constants reach the client and the dealer in the
/// clear, so the compiler records what each was computed from and the verifier
/// ([`crate::verify`]) refuses one computed from a private weight.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ConstOrigin {
    /// Made by the compiler (thresholds, positions, approximation coefficients) or part of the
    /// model's own public data (shapes, scales, masks): depends on no weight.
    #[default]
    Program,
    /// Computed from these weights, which the compile declared public (sorted names).
    PublicWeights(Vec<String>),
    /// Computed from a weight private to `party`: a leak in any program.
    PrivateWeight {
        /// Who owns the weight.
        party: Party,
        /// The weight's name.
        name: String,
    },
}

impl ConstOrigin {
    fn encode(&self, w: &mut Writer) {
        match self {
            ConstOrigin::Program => w.bytes.push(0),
            ConstOrigin::PublicWeights(names) => {
                w.bytes.push(1);
                w.uvar(names.len() as u64);
                for n in names {
                    w.str(n);
                }
            }
            ConstOrigin::PrivateWeight { party, name } => {
                w.bytes.push(2);
                party.encode(w);
                w.str(name);
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<ConstOrigin, DecodeError> {
        let at = r.position();
        Ok(match r.u8()? {
            0 => ConstOrigin::Program,
            1 => {
                let n = r.count()?;
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(r.str(1 << 16)?);
                }
                ConstOrigin::PublicWeights(names)
            }
            2 => ConstOrigin::PrivateWeight { party: Party::decode(r)?, name: r.str(1 << 16)? },
            c => {
                return Err(DecodeError::Malformed {
                    at,
                    what: format!("unknown constant origin {c}"),
                })
            }
        })
    }
}

impl fmt::Display for ConstOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstOrigin::Program => f.write_str("program"),
            ConstOrigin::PublicWeights(n) => write!(f, "public weights {}", n.join(", ")),
            ConstOrigin::PrivateWeight { party, name } => {
                write!(f, "the {party}'s private weight {name}")
            }
        }
    }
}

/// A named tensor crossing the program boundary: an input, a weight or an output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoDecl {
    /// Name (the model's tensor name).
    pub name: String,
    /// The buffer holding it.
    pub buf: Buf,
    /// Who supplies it (inputs, weights) or receives it (outputs).
    pub party: Party,
    /// Fixed-point fractional bits of its encoding (0 for integers).
    pub frac_bits: u8,
    /// Logical shape (the buffer holds the row-major elements).
    pub shape: Vec<u32>,
}

/// A label for cost reports: which layer and what kind of operation an instruction serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    /// Layer name (e.g. `layer3`), or `model` outside layers.
    pub layer: String,
    /// Operation kind (e.g. `matmul`, `gelu`, `softmax`).
    pub op: String,
}

/// A compiled two-party program.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Program {
    /// Fixed-point fractional bits (default 16).
    pub frac_bits: u8,
    /// Free-form metadata (model name, compiler version, sequence length, ...).
    pub meta: Vec<(String, String)>,
    /// Buffer table.
    pub buffers: Vec<BufDecl>,
    /// Constant initialisers of public buffers.
    pub consts: Vec<ConstInit>,
    /// The origin of `consts[i]`; a program built without origins (hand-written tests) has
    /// fewer entries, and a missing entry is [`ConstOrigin::Program`].
    pub const_origins: Vec<ConstOrigin>,
    /// Inputs, supplied by their party at each run.
    pub inputs: Vec<IoDecl>,
    /// Weights, supplied by their party at load time.
    pub weights: Vec<IoDecl>,
    /// Outputs, revealed to their party.
    pub outputs: Vec<IoDecl>,
    /// Cost-report labels; `setup_tags`/`body_tags` index into it.
    pub tags: Vec<Tag>,
    /// Run once per session, its material once per epoch (masking constant weights).
    pub setup: Vec<Instr>,
    /// Tag of each setup instruction.
    pub setup_tags: Vec<u32>,
    /// Run once per inference.
    pub body: Vec<Instr>,
    /// Tag of each body instruction.
    pub body_tags: Vec<u32>,
    /// Sizes that depend on a sequence length chosen at run time (token pruning).
    pub dynamic: Option<crate::dynamic::Dynamic>,
}

impl Program {
    /// The declaration of buffer `b`, if it exists.
    pub fn buf(&self, b: Buf) -> Option<&BufDecl> {
        self.buffers.get(b.0 as usize)
    }

    /// The origin of constant `i` (see [`Program::const_origins`]).
    pub fn const_origin(&self, i: usize) -> &ConstOrigin {
        const PROGRAM: ConstOrigin = ConstOrigin::Program;
        self.const_origins.get(i).unwrap_or(&PROGRAM)
    }

    /// A metadata value by key.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Encodes the program into file bytes (magic, version, hash, payload).
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = self.payload();
        let mut out = Vec::with_capacity(payload.len() + 44);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&payload));
        out.extend_from_slice(&payload);
        out
    }

    /// The SHA-256 of the payload: the program's identity in handshakes.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.payload()).into()
    }

    fn payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes.push(self.frac_bits);
        w.uvar(self.meta.len() as u64);
        for (k, v) in &self.meta {
            w.str(k);
            w.str(v);
        }
        w.uvar(self.buffers.len() as u64);
        for b in &self.buffers {
            w.bytes.push(b.kind.code());
            w.uvar(b.len as u64);
        }
        w.uvar(self.consts.len() as u64);
        for (i, c) in self.consts.iter().enumerate() {
            c.buf.encode(&mut w);
            w.uvar(c.data.len() as u64);
            for &x in &c.data {
                w.bytes.extend_from_slice(&x.to_le_bytes());
            }
            self.const_origin(i).encode(&mut w);
        }
        for list in [&self.inputs, &self.weights, &self.outputs] {
            w.uvar(list.len() as u64);
            for io in list.iter() {
                w.str(&io.name);
                io.buf.encode(&mut w);
                io.party.encode(&mut w);
                w.bytes.push(io.frac_bits);
                w.uvar(io.shape.len() as u64);
                for &d in &io.shape {
                    w.uvar(d as u64);
                }
            }
        }
        w.uvar(self.tags.len() as u64);
        for t in &self.tags {
            w.str(&t.layer);
            w.str(&t.op);
        }
        for (code, tags) in [(&self.setup, &self.setup_tags), (&self.body, &self.body_tags)] {
            w.uvar(code.len() as u64);
            for (i, t) in code.iter().zip(tags.iter()) {
                i.encode(&mut w);
                w.uvar(*t as u64);
            }
        }
        // Optional trailing section: a static program's encoding is unchanged by its existence.
        if let Some(d) = &self.dynamic {
            d.encode(&mut w);
        }
        w.bytes
    }

    /// Decodes file bytes: checks magic, version and hash, then decodes the payload. The result
    /// still needs [`crate::validate`] before it is run.
    pub fn from_bytes(bytes: &[u8]) -> Result<Program, DecodeError> {
        if bytes.len() < 44 {
            return Err(DecodeError::NotAProgram(format!(
                "{} bytes is shorter than the 44-byte header",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(DecodeError::NotAProgram("missing the VEILVBC magic".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version { found: version, expected: FORMAT_VERSION });
        }
        let payload = &bytes[44..];
        if Sha256::digest(payload).as_slice() != &bytes[12..44] {
            return Err(DecodeError::HashMismatch);
        }
        let mut r = Reader::new(payload);
        let p = Program::decode_payload(&mut r).map_err(|e| e.offset(44))?;
        if !r.at_end() {
            return Err(DecodeError::Malformed {
                at: r.position() + 44,
                what: "trailing bytes after the program".into(),
            });
        }
        Ok(p)
    }

    fn decode_payload(r: &mut Reader) -> Result<Program, DecodeError> {
        let mut p = Program { frac_bits: r.u8()?, ..Program::default() };
        for _ in 0..r.count()? {
            let k = r.str(1 << 16)?;
            let v = r.str(1 << 20)?;
            p.meta.push((k, v));
        }
        for _ in 0..r.count()? {
            let at = r.position();
            let code = r.u8()?;
            let kind = Kind::from_code(code).ok_or_else(|| DecodeError::Malformed {
                at,
                what: format!("unknown buffer kind {code}"),
            })?;
            let at = r.position();
            let len = r.u32()?;
            if len > MAX_BUF_LEN {
                return Err(DecodeError::Malformed {
                    at,
                    what: format!("buffer length {len} exceeds {MAX_BUF_LEN}"),
                });
            }
            p.buffers.push(BufDecl { kind, len });
        }
        for _ in 0..r.count()? {
            let buf = Buf::decode(r)?;
            let at = r.position();
            let n = r.count()?;
            let raw = r.take(n.checked_mul(8).ok_or(DecodeError::Truncated { at })?)?;
            let data = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            p.consts.push(ConstInit { buf, data });
            p.const_origins.push(ConstOrigin::decode(r)?);
        }
        for which in 0..3 {
            let n = r.count()?;
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.str(1 << 16)?;
                let buf = Buf::decode(r)?;
                let party = Party::decode(r)?;
                let frac_bits = r.u8()?;
                let rank = r.count()?;
                let shape = (0..rank).map(|_| r.u32()).collect::<Result<_, _>>()?;
                list.push(IoDecl { name, buf, party, frac_bits, shape });
            }
            match which {
                0 => p.inputs = list,
                1 => p.weights = list,
                _ => p.outputs = list,
            }
        }
        for _ in 0..r.count()? {
            let layer = r.str(1 << 16)?;
            let op = r.str(1 << 16)?;
            p.tags.push(Tag { layer, op });
        }
        for section in 0..2 {
            let n = r.count()?;
            let mut code = Vec::with_capacity(n);
            let mut tags = Vec::with_capacity(n);
            for _ in 0..n {
                code.push(Instr::decode(r)?);
                tags.push(r.u32()?);
            }
            if section == 0 {
                p.setup = code;
                p.setup_tags = tags;
            } else {
                p.body = code;
                p.body_tags = tags;
            }
        }
        if !r.at_end() {
            p.dynamic = Some(crate::dynamic::Dynamic::decode(r)?);
        }
        Ok(p)
    }
}
