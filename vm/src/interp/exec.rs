//! A party's side of each instruction ([`PartyVisitor`]): local computation on its own
//! arrays, message parts queued for the exchange, the exchange, `setlen`, and the dealer's
//! material drawn. A private buffer of the other party is never written here (see the parent
//! module).

use super::{PartyVm, Pending, STREAM_OUT};
use crate::bits;
use crate::error::VmError;
use crate::kernels;
use crate::material::At;
use std::time::{Duration, Instant};
use veil_isa::{Buf, Dims, Instr, Kind, Party, PartyVisitor, Program, Strides};

/// What the section loop does after an instruction.
pub(super) enum Flow {
    /// Goes on.
    Next,
    /// Goes on; the instruction waited this long for the peer.
    Waited(Duration),
    /// Stops: the rest of the body runs at this sequence length.
    SetLen(u32),
}

type Step = Result<Flow, VmError>;

/// A party's VM while it runs one instruction: the visitor, private so that no caller runs an
/// instruction outside a section.
pub(super) struct Exec<'a, 'p> {
    pub(super) vm: &'a mut PartyVm<'p>,
    /// Where the instruction sits, for its errors.
    pub(super) at: At,
    /// The program the section comes from (sizes of a pruned instance).
    pub(super) prog: &'a Program,
}

impl Exec<'_, '_> {
    fn add_sub(&mut self, d: Buf, a: Buf, b: Buf, inner: u32, sub: bool) -> Step {
        let vm = &mut *self.vm;
        let dk = vm.kind(d);
        if !vm.computes(dk) {
            return Ok(Flow::Next);
        }
        let use_a = vm.kind(a) != Kind::Public || vm.adds_public(dk);
        let use_b = vm.kind(b) != Kind::Public || vm.adds_public(dk);
        let mut dv = vm.take(d);
        let (av, bv) = (&vm.store.bufs[a.0 as usize], &vm.store.bufs[b.0 as usize]);
        let inner = inner as usize;
        match (use_a, use_b, sub) {
            (true, true, false) => {
                kernels::binary(&mut dv, av, bv, inner, |x, y| x.wrapping_add(y))
            }
            (true, true, true) => kernels::binary(&mut dv, av, bv, inner, |x, y| x.wrapping_sub(y)),
            (true, false, _) => dv.copy_from_slice(av),
            (false, true, false) => kernels::binary(&mut dv, av, bv, inner, |_, y| y),
            (false, true, true) => kernels::binary(&mut dv, av, bv, inner, |_, y| y.wrapping_neg()),
            (false, false, _) => dv.fill(0),
        }
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    /// Hands a long outgoing message to a transport that takes one in parts.
    fn queued(&mut self) -> Step {
        let vm = &mut *self.vm;
        if vm.out.len() >= STREAM_OUT && vm.peer.send_part(&vm.out)? {
            vm.out.clear();
        }
        Ok(Flow::Next)
    }
}

impl PartyVisitor for Exec<'_, '_> {
    type Out = Step;

    fn dealer(&mut self, ins: &Instr) -> Step {
        let vm = &mut *self.vm;
        vm.material.draw(ins, self.at, self.prog, &mut vm.store.bufs)?;
        Ok(Flow::Next)
    }

    fn add(&mut self, d: Buf, a: Buf, b: Buf, inner: u32) -> Step {
        self.add_sub(d, a, b, inner, false)
    }

    fn sub(&mut self, d: Buf, a: Buf, b: Buf, inner: u32) -> Step {
        self.add_sub(d, a, b, inner, true)
    }

    fn mul(&mut self, d: Buf, a: Buf, b: Buf, inner: u32) -> Step {
        let vm = &mut *self.vm;
        if !vm.computes(vm.kind(d)) {
            return Ok(Flow::Next);
        }
        let mut dv = vm.take(d);
        if vm.foreign(a) || vm.foreign(b) {
            dv.fill(0);
        } else {
            let (av, bv) = (&vm.store.bufs[a.0 as usize], &vm.store.bufs[b.0 as usize]);
            kernels::binary(&mut dv, av, bv, inner as usize, |x, y| x.wrapping_mul(y));
        }
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn neg(&mut self, d: Buf, a: Buf) -> Step {
        self.vm.map(d, a, |x| x.wrapping_neg());
        Ok(Flow::Next)
    }

    fn add_imm(&mut self, d: Buf, a: Buf, imm: u64) -> Step {
        let dk = self.vm.kind(d);
        let imm = if self.vm.adds_public(dk) { imm } else { 0 };
        self.vm.map(d, a, move |x| x.wrapping_add(imm));
        Ok(Flow::Next)
    }

    fn mul_imm(&mut self, d: Buf, a: Buf, imm: u64) -> Step {
        self.vm.map(d, a, move |x| x.wrapping_mul(imm));
        Ok(Flow::Next)
    }

    fn shl(&mut self, d: Buf, a: Buf, bits: u8) -> Step {
        let s = bits as u32;
        self.vm.map(d, a, move |x| x.wrapping_shl(s));
        Ok(Flow::Next)
    }

    fn matmul(&mut self, d: Buf, a: Buf, b: Buf, batch: u32, m: u32, k: u32, n: u32) -> Step {
        let vm = &mut *self.vm;
        if !vm.computes(vm.kind(d)) {
            return Ok(Flow::Next);
        }
        let mut dv = vm.take(d);
        if vm.foreign(a) || vm.foreign(b) {
            dv.fill(0);
        } else {
            let (av, bv) = (&vm.store.bufs[a.0 as usize], &vm.store.bufs[b.0 as usize]);
            let dims = [batch, m, k, n].map(|x| x as usize);
            kernels::matmul(&mut dv, av, bv, dims[0], dims[1], dims[2], dims[3]);
        }
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn sum(&mut self, d: Buf, a: Buf, outer: u32, mid: u32, inner: u32) -> Step {
        let vm = &mut *self.vm;
        if !vm.computes(vm.kind(d)) {
            return Ok(Flow::Next);
        }
        let mut dv = vm.take(d);
        let (o, m, i) = (outer as usize, mid as usize, inner as usize);
        kernels::sum(&mut dv, &vm.store.bufs[a.0 as usize], o, m, i);
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn copy(
        &mut self,
        d: Buf,
        d_off: u32,
        a: Buf,
        a_off: u32,
        shape: &Dims,
        d_strides: &Strides,
        a_strides: &Strides,
    ) -> Step {
        let vm = &mut *self.vm;
        if !vm.computes(vm.kind(d)) {
            return Ok(Flow::Next);
        }
        let mut dv = vm.take(d);
        let av = &vm.store.bufs[a.0 as usize];
        let (d_off, a_off) = (d_off as usize, a_off as usize);
        kernels::copy(&mut dv, d_off, av, a_off, &shape.0, &d_strides.0, &a_strides.0);
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn trunc_post(
        &mut self,
        c2: Buf,
        pk: Buf,
        s: Buf,
        c: Buf,
        rhi: Buf,
        m: Buf,
        t: u8,
        w: u8,
    ) -> Step {
        let vm = &mut *self.vm;
        let (t, w) = (t as u32, w as u32);
        let (wmask, off, k) = kernels::trunc_post_constants(t, w);
        let (mut c2v, mut pkv, mut sv) = (vm.take(c2), vm.take(pk), vm.take(s));
        let (cv, rv, mv) = (
            &vm.store.bufs[c.0 as usize],
            &vm.store.bufs[rhi.0 as usize],
            &vm.store.bufs[m.0 as usize],
        );
        for i in 0..cv.len() {
            let cc = cv[i] & wmask;
            c2v[i] = (cc >> t).wrapping_sub(off);
            let p = if (cc >> (w - 1)) & 1 == 0 { k } else { 0 };
            pkv[i] = p;
            sv[i] = rv[i].wrapping_sub(p.wrapping_mul(mv[i]));
        }
        vm.put(c2, c2v);
        vm.put(pk, pkv);
        vm.put(s, sv);
        Ok(Flow::Next)
    }

    fn sel(&mut self, d: Buf, e: Buf, a: Buf, b: Buf) -> Step {
        let vm = &mut *self.vm;
        if !vm.computes(vm.kind(d)) {
            return Ok(Flow::Next);
        }
        let mut dv = vm.take(d);
        let (ev, av, bv) = (
            &vm.store.bufs[e.0 as usize],
            &vm.store.bufs[a.0 as usize],
            &vm.store.bufs[b.0 as usize],
        );
        kernels::sel(&mut dv, ev, av, bv);
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn xor_b(&mut self, d: Buf, a: Buf, b: Buf) -> Step {
        let vm = &mut *self.vm;
        let dk = vm.kind(d);
        let client = vm.me == Party::Client;
        let use_a = vm.kind(a) == Kind::Bits || dk == Kind::PubBits || client;
        let use_b = vm.kind(b) == Kind::Bits || dk == Kind::PubBits || client;
        let mut dv = vm.take(d);
        let (av, bv) = (&vm.store.bufs[a.0 as usize], &vm.store.bufs[b.0 as usize]);
        for (i, o) in dv.iter_mut().enumerate() {
            *o = (if use_a { av[i] } else { 0 }) ^ (if use_b { bv[i] } else { 0 });
        }
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn and_b(&mut self, d: Buf, a: Buf, b: Buf) -> Step {
        let vm = &mut *self.vm;
        let mut dv = vm.take(d);
        let (av, bv) = (&vm.store.bufs[a.0 as usize], &vm.store.bufs[b.0 as usize]);
        for (i, o) in dv.iter_mut().enumerate() {
            *o = av[i] & bv[i];
        }
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn not_b(&mut self, d: Buf, a: Buf) -> Step {
        let vm = &mut *self.vm;
        let n = vm.cur().buffers[d.0 as usize].len as usize;
        let flip = vm.kind(d) == Kind::PubBits || vm.me == Party::Client;
        let mut dv = vm.take(d);
        let av = &vm.store.bufs[a.0 as usize];
        for (i, o) in dv.iter_mut().enumerate() {
            *o = if flip { !av[i] } else { av[i] };
        }
        bits::clear_tail(&mut dv, n);
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn lookup(&mut self, d: Buf, table: Buf, idx: Buf, shift: u8, width: u8) -> Step {
        let vm = &mut *self.vm;
        let mut dv = vm.take(d);
        let (tv, iv) = (&vm.store.bufs[table.0 as usize], &vm.store.bufs[idx.0 as usize]);
        kernels::lookup(&mut dv, tv, iv, shift as u32, width as u32);
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn bit_of(&mut self, d: Buf, a: Buf, bit: u8) -> Step {
        let vm = &mut *self.vm;
        let mut dv = vm.take(d);
        kernels::bit_of(&mut dv, &vm.store.bufs[a.0 as usize], bit as u32);
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn open(&mut self, d: Buf, a: Buf, nb: u8, lo: u8) -> Step {
        let vm = &mut *self.vm;
        bits::pack_from(&vm.store.bufs[a.0 as usize], lo, nb - lo, &mut vm.out);
        vm.pending.push(Pending::Open { d, a, bits: nb, lo });
        self.queued()
    }

    fn open_b(&mut self, d: Buf, a: Buf) -> Step {
        let vm = &mut *self.vm;
        let n = vm.cur().buffers[a.0 as usize].len as usize;
        for (i, w) in vm.store.bufs[a.0 as usize].iter().enumerate() {
            let bytes = w.to_le_bytes();
            let take = (n.div_ceil(8) - i * 8).min(8);
            vm.out.extend_from_slice(&bytes[..take]);
        }
        vm.pending.push(Pending::OpenB { d, a, n });
        self.queued()
    }

    fn send(&mut self, d: Buf, a: Buf, from: Party) -> Step {
        let vm = &mut *self.vm;
        let n = vm.cur().buffers[a.0 as usize].len as usize;
        if from == vm.me {
            bits::pack(&vm.store.bufs[a.0 as usize], 64, &mut vm.out);
        } else {
            vm.pending.push(Pending::Recv { d, n });
        }
        self.queued()
    }

    fn reveal(&mut self, d: Buf, a: Buf, to: Party) -> Step {
        let vm = &mut *self.vm;
        let n = vm.cur().buffers[a.0 as usize].len as usize;
        if to == vm.me {
            vm.pending.push(Pending::Reveal { d, a, n });
        } else {
            bits::pack(&vm.store.bufs[a.0 as usize], 64, &mut vm.out);
        }
        self.queued()
    }

    fn exchange(&mut self) -> Step {
        let t = Instant::now();
        self.vm.round(self.at)?;
        Ok(Flow::Waited(t.elapsed()))
    }

    fn cumsum(&mut self, d: Buf, a: Buf, outer: u32, mid: u32, inner: u32) -> Step {
        let vm = &mut *self.vm;
        if !vm.computes(vm.kind(d)) {
            return Ok(Flow::Next);
        }
        let mut dv = vm.take(d);
        let (o, m, i) = (outer as usize, mid as usize, inner as usize);
        kernels::cumsum(&mut dv, &vm.store.bufs[a.0 as usize], o, m, i);
        vm.put(d, dv);
        Ok(Flow::Next)
    }

    fn setlen(&mut self, a: Buf, frac: u8) -> Step {
        let v = self.vm.store.bufs[a.0 as usize][0] as i64;
        let half = if frac == 0 { 0 } else { 1i64 << (frac - 1) };
        let n = v.checked_add(half).map_or(0, |x| x >> frac);
        Ok(Flow::SetLen(u32::try_from(n).unwrap_or(0)))
    }
}
