//! Dealer material as the parties draw it. The dealer's side (`dealer.rs`) generates exactly
//! this: per dealer instruction, the client draws every output from its PRG, each output from
//! its own stream (`Prg::stream`); the server draws independent randomness (`dmask`, `dbits`, its own `dpriv`) from its
//! PRG and every correlated output from one correction frame.

use crate::error::VmError;
use crate::net::FrameSource;
use crate::prg::Prg;
use crate::store::Slot;
use veil_isa::{Buf, DealerVisitor, Instr, Kind, Party, Program};

/// A party's source of dealer material.
pub struct Material {
    me: Party,
    prg: Prg,
    corrections: Option<Box<dyn FrameSource>>,
    /// No material was dealt for this section: any draw is an error.
    none: bool,
}

/// Where an instruction sits, for error messages.
#[derive(Copy, Clone)]
pub struct At {
    /// "setup" or "body".
    pub section: &'static str,
    /// Index in the section.
    pub index: usize,
}

impl Material {
    /// Material for `me`, from its seed and (server only) the dealer's correction stream.
    pub fn new(
        me: Party,
        seed: crate::prg::Seed,
        corrections: Option<Box<dyn FrameSource>>,
    ) -> Material {
        Material { me, prg: Prg::new(seed), corrections, none: false }
    }

    /// No material: for a section that draws none on this party's side (a client's setup,
    /// which only receives the server's masked weights). A draw is an error.
    pub fn none(me: Party) -> Material {
        Material { me, prg: Prg::new([0; 16]), corrections: None, none: true }
    }

    /// Dealer bytes received so far.
    pub fn dealer_bytes(&self) -> u64 {
        self.corrections.as_ref().map(|c| c.bytes()).unwrap_or(0)
    }

    /// Receives one correction frame of exactly `dst.len()` words into `dst`.
    fn frame_into(&mut self, ins: &Instr, at: At, dst: &mut [u64]) -> Result<(), VmError> {
        let f = self.frame_bytes(ins, at, 8 * dst.len())?;
        for (d, c) in dst.iter_mut().zip(f.chunks_exact(8)) {
            *d = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        Ok(())
    }

    fn frame_bytes(&mut self, ins: &Instr, at: At, bytes: usize) -> Result<Vec<u8>, VmError> {
        let err = |msg: String| VmError::Dealer {
            section: at.section,
            index: at.index,
            name: ins.name(),
            msg,
        };
        let src = self
            .corrections
            .as_mut()
            .ok_or_else(|| err("the server has no correction stream".into()))?;
        src.recv_exact(bytes).map_err(|e| match e {
            crate::net::TransportError::Malformed { what, .. } => err(what),
            e => e.into(),
        })
    }

    /// Draws the material of dealer instruction `ins` into the party's buffers.
    pub fn draw(
        &mut self,
        ins: &Instr,
        at: At,
        p: &Program,
        bufs: &mut [Slot],
    ) -> Result<(), VmError> {
        let mine = Kind::Private(self.me);
        let foreign_priv =
            matches!(ins, Instr::DPriv { d } if p.buffers[d.0 as usize].kind != mine);
        if self.none && !foreign_priv {
            return Err(VmError::Dealer {
                section: at.section,
                index: at.index,
                name: ins.name(),
                msg: format!("the {} has no dealer material for this section", self.me),
            });
        }
        ins.visit_dealer(&mut Draw { m: self, ins, at, p, bufs })
    }
}

/// One dealer instruction's draw into a party's buffers.
struct Draw<'a> {
    m: &'a mut Material,
    ins: &'a Instr,
    at: At,
    p: &'a Program,
    bufs: &'a mut [Slot],
}

impl Draw<'_> {
    fn len(&self, b: Buf) -> usize {
        self.p.buffers[b.0 as usize].len as usize
    }

    fn client(&self) -> bool {
        self.m.me == Party::Client
    }

    /// Moves the PRG to output `part` of this instruction.
    fn seek(&mut self, part: u8) {
        self.m.prg.at(self.at.section == "setup", self.at.index, part);
    }

    /// One correlated ring output: the client's from its PRG, the server's from a frame.
    fn ring(&mut self, d: Buf) -> Result<(), VmError> {
        if self.client() {
            self.seek(0);
            self.m.prg.fill(&mut self.bufs[d.0 as usize]);
            Ok(())
        } else {
            self.m.frame_into(self.ins, self.at, &mut self.bufs[d.0 as usize])
        }
    }

    /// One correlated bit output: the client's from its PRG, the server's from a frame.
    fn bits(&mut self, d: Buf) -> Result<(), VmError> {
        if self.client() {
            let n = self.len(d);
            self.seek(0);
            self.m.prg.fill_bits(&mut self.bufs[d.0 as usize], n);
            Ok(())
        } else {
            self.m.frame_into(self.ins, self.at, &mut self.bufs[d.0 as usize])
        }
    }

    /// The server's two outputs of `words` words each, from one frame.
    fn pair_frame(&mut self, x: Buf, y: Buf, words: usize) -> Result<(), VmError> {
        let f = self.m.frame_bytes(self.ins, self.at, 16 * words)?;
        let (fx, fy) = f.split_at(8 * words);
        for (dst, src) in [(x, fx), (y, fy)] {
            for (d, c) in self.bufs[dst.0 as usize].iter_mut().zip(src.chunks_exact(8)) {
                *d = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
        }
        Ok(())
    }

    fn not_drawn(&self) -> Result<(), VmError> {
        Err(VmError::Dealer {
            section: self.at.section,
            index: self.at.index,
            name: self.ins.name(),
            msg: "not a dealer instruction: there is no material to draw".into(),
        })
    }
}

impl DealerVisitor for Draw<'_> {
    type Out = Result<(), VmError>;

    fn online(&mut self, _: &Instr) -> Self::Out {
        self.not_drawn()
    }

    fn setlen(&mut self, _: Buf, _: u8) -> Self::Out {
        self.not_drawn()
    }

    fn dmask(&mut self, d: Buf) -> Self::Out {
        self.seek(0);
        self.m.prg.fill(&mut self.bufs[d.0 as usize]);
        Ok(())
    }

    fn dpriv(&mut self, d: Buf) -> Self::Out {
        if self.p.buffers[d.0 as usize].kind == Kind::Private(self.m.me) {
            self.seek(0);
            self.m.prg.fill(&mut self.bufs[d.0 as usize]);
        }
        Ok(())
    }

    fn dbits(&mut self, d: Buf) -> Self::Out {
        let n = self.len(d);
        self.seek(0);
        self.m.prg.fill_bits(&mut self.bufs[d.0 as usize], n);
        Ok(())
    }

    fn dprod(&mut self, d: Buf, _: Buf, _: Buf, _: u32, bits: u8) -> Self::Out {
        if bits == 64 || self.client() {
            return self.ring(d);
        }
        // Only the low `bits` of the server's share come (see the instruction).
        let n = self.len(d);
        let f = self.m.frame_bytes(self.ins, self.at, crate::bits::packed_len(n, bits))?;
        crate::bits::unpack(&f, n, bits, &mut self.bufs[d.0 as usize]);
        Ok(())
    }

    fn dmatmul(&mut self, d: Buf, _: Buf, _: Buf, _: u32, _: u32, _: u32, _: u32) -> Self::Out {
        self.ring(d)
    }

    fn dbit2a(&mut self, d: Buf, _: Buf) -> Self::Out {
        self.ring(d)
    }

    fn dcase(&mut self, d: Buf, _: Buf, _: Buf, _: Buf, _: Buf) -> Self::Out {
        if !self.client() {
            return self.ring(d);
        }
        // Case-major, each case from its own stream (see the dealer's `dcase`).
        let q = self.len(d) / 4;
        for c in 0..4 {
            self.seek(c as u8);
            self.m.prg.fill(&mut self.bufs[d.0 as usize][c * q..(c + 1) * q]);
        }
        Ok(())
    }

    fn dtrunc(&mut self, hi: Buf, msb: Buf, _: Buf, t: u8, w: u8) -> Self::Out {
        if self.client() {
            self.seek(0);
            self.m.prg.fill(&mut self.bufs[hi.0 as usize]);
            self.seek(1);
            self.m.prg.fill(&mut self.bufs[msb.0 as usize]);
            Ok(())
        } else {
            // `msb`'s correction comes narrow (`cost::msb_share_bits`): its high bits are
            // multiplied away by the wrap factor.
            let n = self.len(hi);
            let mb = veil_isa::cost::msb_share_bits(t, w);
            let f =
                self.m.frame_bytes(self.ins, self.at, 8 * n + crate::bits::packed_len(n, mb))?;
            let (fh, fm) = f.split_at(8 * n);
            for (d, c) in self.bufs[hi.0 as usize].iter_mut().zip(fh.chunks_exact(8)) {
                *d = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
            crate::bits::unpack(fm, n, mb, &mut self.bufs[msb.0 as usize]);
            Ok(())
        }
    }

    fn dand(&mut self, d: Buf, _: Buf, _: Buf) -> Self::Out {
        self.bits(d)
    }

    fn dbit(&mut self, d: Buf, _: Buf, _: u8) -> Self::Out {
        self.bits(d)
    }

    fn dtable(&mut self, lt: Buf, eq: Buf, _: Buf, _: u8, _: u8) -> Self::Out {
        let n = self.len(lt);
        if self.client() {
            self.seek(0);
            self.m.prg.fill_bits(&mut self.bufs[lt.0 as usize], n);
            self.seek(1);
            self.m.prg.fill_bits(&mut self.bufs[eq.0 as usize], n);
            Ok(())
        } else {
            self.pair_frame(lt, eq, n.div_ceil(64))
        }
    }
}
