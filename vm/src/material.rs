//! Dealer material as the parties draw it. The dealer's side (`dealer.rs`) generates exactly
//! this sequence: per dealer instruction, in program order, the client draws every output from
//! its PRG; the server draws independent randomness (`dmask`, `dbits`, its own `dpriv`) from its
//! PRG and every correlated output from one correction frame.

use crate::error::VmError;
use crate::net::FrameSource;
use crate::prg::Prg;
use crate::store::Slot;
use veil_isa::{Instr, Kind, Party, Program};

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
        let f = self.frame_bytes(ins, at, dst.len())?;
        for (d, c) in dst.iter_mut().zip(f.chunks_exact(8)) {
            *d = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        Ok(())
    }

    fn frame_bytes(&mut self, ins: &Instr, at: At, words: usize) -> Result<Vec<u8>, VmError> {
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
        src.recv_exact(words * 8).map_err(|e| match e {
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
        let len = |b: veil_isa::Buf| p.buffers[b.0 as usize].len as usize;
        let client = self.me == Party::Client;
        use Instr::*;
        let foreign_priv =
            matches!(ins, DPriv { d } if p.buffers[d.0 as usize].kind != Kind::Private(self.me));
        if self.none && !foreign_priv {
            return Err(VmError::Dealer {
                section: at.section,
                index: at.index,
                name: ins.name(),
                msg: format!("the {} has no dealer material for this section", self.me),
            });
        }
        match ins {
            DMask { d } => self.prg.fill(&mut bufs[d.0 as usize]),
            DPriv { d } => {
                if p.buffers[d.0 as usize].kind == Kind::Private(self.me) {
                    self.prg.fill(&mut bufs[d.0 as usize]);
                }
            }
            DBits { d } => self.prg.fill_bits(&mut bufs[d.0 as usize], len(*d)),
            DProd { d, .. } | DMatMul { d, .. } | DBit2A { d, .. } => {
                if client {
                    self.prg.fill(&mut bufs[d.0 as usize]);
                } else {
                    self.frame_into(ins, at, &mut bufs[d.0 as usize])?;
                }
            }
            DTrunc { hi, msb, .. } => {
                if client {
                    self.prg.fill(&mut bufs[hi.0 as usize]);
                    self.prg.fill(&mut bufs[msb.0 as usize]);
                } else {
                    let n = len(*hi);
                    let f = self.frame_bytes(ins, at, 2 * n)?;
                    let (fh, fm) = f.split_at(8 * n);
                    for (dst, src) in [(hi, fh), (msb, fm)] {
                        for (d, c) in bufs[dst.0 as usize].iter_mut().zip(src.chunks_exact(8)) {
                            *d = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                        }
                    }
                }
            }
            DAnd { d, .. } | DBit { d, .. } => {
                if client {
                    self.prg.fill_bits(&mut bufs[d.0 as usize], len(*d));
                } else {
                    self.frame_into(ins, at, &mut bufs[d.0 as usize])?;
                }
            }
            DTable { lt, eq, .. } => {
                let n = len(*lt);
                if client {
                    self.prg.fill_bits(&mut bufs[lt.0 as usize], n);
                    self.prg.fill_bits(&mut bufs[eq.0 as usize], n);
                } else {
                    let w = n.div_ceil(64);
                    let f = self.frame_bytes(ins, at, 2 * w)?;
                    let (fl, fe) = f.split_at(8 * w);
                    for (dst, src) in [(lt, fl), (eq, fe)] {
                        for (d, c) in bufs[dst.0 as usize].iter_mut().zip(src.chunks_exact(8)) {
                            *d = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                        }
                    }
                }
            }
            _ => unreachable!("not a dealer instruction: {}", ins.name()),
        }
        Ok(())
    }
}
