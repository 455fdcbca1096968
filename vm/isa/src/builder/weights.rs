//! Products with a constant operand held in the clear by one party (a private weight).
//!
//! The weight `W` of party `p` is masked once per epoch: `p` sends `F = W + B` to the
//! other party `q` (`B` known to `p` and the dealer only). Per inference `q` sends `E = x_q - A`
//! (`A` known to `q` and the dealer), `p` computes `(x_p + E)·W`, `q` computes `A·F`, and the
//! dealer supplies shares of `A·B`:
//! `(x_p + E)·W + A·F - A·B = x_p·W + (x_q - A)·W + A·(W + B) - A·B = x·W`.
//! So the per-inference traffic is one message of the activation, one way, and nothing
//! depends on the weight's size.

use super::ProgramBuilder;
use crate::operand::{Buf, Party};
use crate::ops::Instr;
use crate::program::Kind;

impl ProgramBuilder {
    /// The load-time mask of a private weight: `(B, F)` with `B` private to the owner and
    /// `F = W + B` private to the other party. Cached per weight.
    ///
    /// Setup rounds: 1. Setup sends: 8 bytes per weight element from the owner.
    fn weight_mask(&mut self, w: Buf) -> (Buf, Buf) {
        if let Some(&m) = self.weight_masks.get(&w) {
            return m;
        }
        let owner = match self.kind(w) {
            Kind::Private(p) => p,
            k => panic!("weight_mask needs a private weight, got {k}"),
        };
        let n = self.len(w);
        let m = self.in_setup(|b| {
            let mask = b.buf(Kind::Private(owner), n);
            b.emit(Instr::DPriv { d: mask });
            let f_owner = b.add(w, mask);
            let f = b.buf(Kind::Private(owner.other()), n);
            b.emit(Instr::Send { d: f, a: f_owner, from: owner });
            (mask, f)
        });
        self.weight_masks.insert(w, m);
        m
    }

    /// `E = x_q - A` sent by the non-owner `q`; returns `(P, A)` where `P` holds `x_p + E` at the
    /// owner. Cached: several weights applied to one activation (Q, K, V) share one message.
    fn send_masked_activation(&mut self, x: Buf, owner: Party) -> (Buf, Buf) {
        if let Some(&pa) = self.activation_cache.get(&(x, owner)) {
            return pa;
        }
        let q = owner.other();
        let n = self.len(x);
        let a = self.buf(Kind::Private(q), n);
        self.emit(Instr::DPriv { d: a });
        let e = self.sub(x, a);
        let e_recv = self.buf(Kind::Private(owner), n);
        self.emit(Instr::Send { d: e_recv, a: e, from: q });
        let p = self.add(x, e_recv);
        self.activation_cache.insert((x, owner), (p, a));
        (p, a)
    }

    fn owner_of(&self, w: Buf) -> Party {
        match self.kind(w) {
            Kind::Private(p) => p,
            k => panic!("expected a private weight, got {k}"),
        }
    }

    /// `x · W` for a share `x` (`batch×m×k`, or `m×k`) and a weight `W` (`k×n`) private to one
    /// party. Result fractional bits: those of `x` plus those of `W`.
    ///
    /// Rounds: 1. Sends: 8 bytes per element of `x`, from the non-owner only. Dealer: one
    /// `m×n` correction per product (shares of `A·B`). Setup: see `weight_mask`.
    pub fn matmul_priv(&mut self, x: Buf, w: Buf, batch: u32, m: u32, k: u32, n: u32) -> Buf {
        let owner = self.owner_of(w);
        let (b_mask, f) = self.weight_mask(w);
        let (p, a) = self.send_masked_activation(x, owner);
        let pw = self.matmul_local(p, w, batch, m, k, n);
        let af = self.matmul_local(a, f, batch, m, k, n);
        let ab = self.buf(Kind::Share, batch * m * n);
        self.emit(Instr::DMatMul { d: ab, a, b: b_mask, batch, m, k, n });
        let s = self.add(pw, af);
        self.sub(s, ab)
    }

    /// `x ⊙ W` elementwise for a share `x` and a weight `W` private to one party, `W`
    /// broadcast by `inner` (see the `mul` instruction).
    ///
    /// Rounds: 1. Sends: 8 bytes per element of `x`, from the non-owner only.
    pub fn mul_priv(&mut self, x: Buf, w: Buf, inner: u32) -> Buf {
        let owner = self.owner_of(w);
        let (b_mask, f) = self.weight_mask(w);
        let (p, a) = self.send_masked_activation(x, owner);
        let pw = self.mul_local(p, w, inner);
        let af = self.mul_local(a, f, inner);
        let ab = self.dprod(a, b_mask, inner);
        let s = self.add(pw, af);
        self.sub(s, ab)
    }
}
