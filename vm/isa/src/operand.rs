//! Instruction operands and their byte encoding.

use crate::DecodeError;
use std::fmt;

/// A buffer id: an index into the program's buffer table.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Buf(pub u32);

impl fmt::Display for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// One of the two computing parties.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Party {
    /// Party 0: owns the input, receives the output.
    Client,
    /// Party 1: owns the private weights.
    Server,
}

impl Party {
    /// 0 for the client, 1 for the server.
    pub fn index(self) -> usize {
        match self {
            Party::Client => 0,
            Party::Server => 1,
        }
    }

    /// The other party.
    pub fn other(self) -> Party {
        match self {
            Party::Client => Party::Server,
            Party::Server => Party::Client,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Party::Client => "client",
            Party::Server => "server",
        }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A list of dimension sizes (shapes of strided copies).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Dims(pub Vec<u32>);

/// A list of signed element strides.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Strides(pub Vec<i64>);

/// Appends LEB128 varints and fixed fields to a byte vector.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub bytes: Vec<u8>,
}

impl Writer {
    /// Appends an unsigned varint.
    pub fn uvar(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.bytes.push(b);
                return;
            }
            self.bytes.push(b | 0x80);
        }
    }

    /// Appends a zigzag-encoded signed varint.
    pub fn ivar(&mut self, v: i64) {
        self.uvar(((v << 1) ^ (v >> 63)) as u64);
    }

    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.uvar(b.len() as u64);
        self.bytes.extend_from_slice(b);
    }

    /// Appends a length-prefixed UTF-8 string.
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

/// Reads what [`Writer`] wrote, failing (never panicking) on truncated or malformed input.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when every byte was consumed.
    pub fn at_end(&self) -> bool {
        self.pos == self.data.len()
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.data.get(self.pos).ok_or(DecodeError::Truncated { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads an unsigned varint.
    pub fn uvar(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = (b & 0x7f) as u64;
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Malformed {
                    at: start,
                    what: "varint overflows 64 bits".into(),
                });
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed { at: start, what: "varint longer than 10 bytes".into() })
    }

    /// Reads an unsigned varint that must fit in u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let at = self.pos;
        u32::try_from(self.uvar()?)
            .map_err(|_| DecodeError::Malformed { at, what: "value exceeds u32".into() })
    }

    /// Reads a zigzag signed varint.
    pub fn ivar(&mut self) -> Result<i64, DecodeError> {
        let v = self.uvar()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// Reads exactly `n` raw bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.data.len() - self.pos {
            return Err(DecodeError::Truncated { at: self.data.len() });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.uvar()? as usize;
        if n > max || n > self.data.len() - self.pos {
            return Err(DecodeError::Malformed {
                at,
                what: format!("byte string of length {n} does not fit"),
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn str(&mut self, max: usize) -> Result<String, DecodeError> {
        let at = self.pos;
        let b = self.bytes(max)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| DecodeError::Malformed { at, what: "string is not UTF-8".into() })
    }

    /// Reads a count of items that each take at least one byte, so a hostile count cannot
    /// make the caller allocate more than the input's size.
    pub fn count(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.uvar()? as usize;
        if n > self.data.len() - self.pos {
            return Err(DecodeError::Malformed {
                at,
                what: format!("count {n} exceeds the remaining input"),
            });
        }
        Ok(n)
    }
}

/// One size field of an instruction, writable (see [`crate::Instr::slots_mut`]).
pub enum SlotMut<'a> {
    /// A `u32` field or `Dims` entry.
    U32(&'a mut u32),
    /// A `Strides` entry.
    I64(&'a mut i64),
}

impl SlotMut<'_> {
    /// Stores `v`, failing when it does not fit the field.
    pub fn set(self, v: i64) -> Result<(), String> {
        match self {
            SlotMut::U32(x) => {
                *x = u32::try_from(v).map_err(|_| format!("{v} does not fit an unsigned size"))?
            }
            SlotMut::I64(x) => *x = v,
        }
        Ok(())
    }
}

/// An instruction field: encodes, decodes and prints itself.
pub trait Operand: Sized {
    /// Appends the encoding.
    fn encode(&self, w: &mut Writer);
    /// Reads the encoding.
    fn decode(r: &mut Reader) -> Result<Self, DecodeError>;
    /// Disassembly text.
    fn disas(&self) -> String;
    /// Appends the field's size values (none for buffers, bit counts and immediates).
    fn slots(&self, _out: &mut Vec<i64>) {}
    /// Appends writable references to the values [`Operand::slots`] lists.
    fn slots_mut<'a>(&'a mut self, _out: &mut Vec<SlotMut<'a>>) {}
}

impl Operand for Buf {
    fn encode(&self, w: &mut Writer) {
        w.uvar(self.0 as u64)
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Buf(r.u32()?))
    }
    fn disas(&self) -> String {
        self.to_string()
    }
}

impl Operand for u32 {
    fn slots(&self, out: &mut Vec<i64>) {
        out.push(*self as i64)
    }
    fn slots_mut<'a>(&'a mut self, out: &mut Vec<SlotMut<'a>>) {
        out.push(SlotMut::U32(self))
    }
    fn encode(&self, w: &mut Writer) {
        w.uvar(*self as u64)
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u32()
    }
    fn disas(&self) -> String {
        self.to_string()
    }
}

impl Operand for u8 {
    fn encode(&self, w: &mut Writer) {
        w.bytes.push(*self)
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u8()
    }
    fn disas(&self) -> String {
        self.to_string()
    }
}

impl Operand for u64 {
    fn encode(&self, w: &mut Writer) {
        w.uvar(*self)
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        r.uvar()
    }
    fn disas(&self) -> String {
        if *self > u64::MAX / 2 {
            format!("-{}", self.wrapping_neg())
        } else {
            self.to_string()
        }
    }
}

impl Operand for Party {
    fn encode(&self, w: &mut Writer) {
        w.bytes.push(self.index() as u8)
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let at = r.position();
        match r.u8()? {
            0 => Ok(Party::Client),
            1 => Ok(Party::Server),
            p => Err(DecodeError::Malformed {
                at,
                what: format!("party {p} is neither 0 (client) nor 1 (server)"),
            }),
        }
    }
    fn disas(&self) -> String {
        self.name().to_string()
    }
}

impl Operand for Dims {
    fn slots(&self, out: &mut Vec<i64>) {
        out.extend(self.0.iter().map(|&d| d as i64))
    }
    fn slots_mut<'a>(&'a mut self, out: &mut Vec<SlotMut<'a>>) {
        out.extend(self.0.iter_mut().map(SlotMut::U32))
    }
    fn encode(&self, w: &mut Writer) {
        w.uvar(self.0.len() as u64);
        for &d in &self.0 {
            w.uvar(d as u64);
        }
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.count()?;
        (0..n).map(|_| r.u32()).collect::<Result<_, _>>().map(Dims)
    }
    fn disas(&self) -> String {
        format!("[{}]", self.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
    }
}

impl Operand for Strides {
    fn slots(&self, out: &mut Vec<i64>) {
        out.extend(self.0.iter().copied())
    }
    fn slots_mut<'a>(&'a mut self, out: &mut Vec<SlotMut<'a>>) {
        out.extend(self.0.iter_mut().map(SlotMut::I64))
    }
    fn encode(&self, w: &mut Writer) {
        w.uvar(self.0.len() as u64);
        for &d in &self.0 {
            w.ivar(d);
        }
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.count()?;
        (0..n).map(|_| r.ivar()).collect::<Result<_, _>>().map(Strides)
    }
    fn disas(&self) -> String {
        format!("[{}]", self.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
    }
}
