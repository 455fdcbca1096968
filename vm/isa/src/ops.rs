//! The instruction list. Everything about an instruction's *form* and *class* is generated
//! from this one list: the `Instr` enum, its name, opcode, encoder, decoder and disassembly,
//! which operands it writes, its [`Class`](crate::class::Class) and the per-role visitors of
//! [`crate::visit`]. What it *costs* (`cost.rs`), what makes it legal (`validate.rs`), what it
//! reveals (`verify.rs`) and what it does (the VM and the dealer) are written elsewhere, as
//! exhaustive matches or visitor implementations, so adding an instruction fails to compile
//! until each says so.
//!
//! # Adding an instruction
//! 1. Add a line to [`for_each_op!`] with its class and its operands, written ones before the
//!    `;`: at the end, since the opcode is the position and the others keep theirs. Add a
//!    sample to this module's tests, and check its class in `vm/isa/tests/classes.rs`.
//! 2. Build. The errors lead to everything that must handle it: the checks in `validate.rs`,
//!    the cost in `cost.rs`, the leakage analysis in `verify.rs`, the buffer renaming in
//!    `builder/mod.rs`; by class, the interpreter (`PartyVisitor` in `vm/src/interp/exec.rs`:
//!    every class but `dealer`), the dealer and the parties' draws (`DealerVisitor` in
//!    `vm/src/dealer.rs` and `vm/src/material.rs`: `dealer` and `control`), and the JIT
//!    (`ElementwiseVisitor` in `vm/src/jit/fuse.rs`: `elementwise`). None of them has a
//!    wildcard arm to fall into: a visitor that misses a method does not compile.
//!
//! ```compile_fail,E0046
//! // The dealer's visitor must name every dealer instruction.
//! struct Nothing;
//! impl veil_isa::visit::DealerVisitor for Nothing {
//!     type Out = ();
//!     fn online(&mut self, _: &veil_isa::Instr) {}
//! }
//! ```
//!
//! # Naming and conventions
//! - Each line reads `name = Variant [class] { written operands ; read operands }`. A written
//!   operand is a buffer, never also read by the same instruction. Written operands are named
//!   `d` or after what they hold (`hi`, `msb`, `lt`, `eq`, ...).
//! - The class says who runs the instruction and how (see [`Class`](crate::class::Class)):
//!   `local` and `elementwise` (each party on its own arrays; the JIT fuses `elementwise` ring
//!   arithmetic into kernels), `comm` (`open`, `open_b`, `send`, `reveal`), `exchange`,
//!   `dealer` (every `d*` instruction) and `control` (`setlen`).
//! - Buffers have a kind (see [`crate::Kind`]): `share` (each party holds an additive share in
//!   Z_2^64), `public` (both hold the same value), `private(p)` (only party `p` holds it; the
//!   other party's array is all zeros, so a private buffer is also a valid sharing), `bits`
//!   (XOR-shared packed bits) and `pubbits`.
//! - Arithmetic is wrapping in Z_2^64. Where a public value meets a share-like one in `add`,
//!   `sub` or `add_imm`, only the client adds it, so the result stays a sharing.
//! - Binary elementwise instructions broadcast `b`: element `i` uses `b[(i / inner) % len(b)]`,
//!   which covers a bias over rows (`inner = 1`) and a per-row value (`inner = row length`).
//! - Instructions whose name starts with `d` draw correlated randomness from the dealer. Their
//!   inputs must be *dealer-known* buffers (outputs of other `d` instructions), whose full value
//!   the dealer holds. The client's share always comes from its own seeded PRG; the server's
//!   comes from its PRG for independent randomness (`dmask`, `dbits`) and from the dealer's
//!   correction stream for correlated values. See `cost.rs` for the exact draw of each.
//! - `open`, `open_b`, `send` and `reveal` only queue a message part; `exchange` sends every
//!   queued part in one message each way and completes them, reading the sources of `open`,
//!   `open_b` and `reveal` again (so they must not be written before it). One `exchange` is one
//!   round.

/// Invokes `$m!` with the full instruction list.
#[macro_export]
macro_rules! for_each_op {
    ($m:ident) => {
        $m! {
            /// `d = a + b`.
            add = Add [elementwise] { d: Buf; a: Buf, b: Buf, inner: u32 };
            /// `d = a - b`.
            sub = Sub [elementwise] { d: Buf; a: Buf, b: Buf, inner: u32 };
            /// `d = a · b`, each party on its own arrays; a sharing of the product when at most one
            /// operand is share-like.
            mul = Mul [elementwise] { d: Buf; a: Buf, b: Buf, inner: u32 };
            /// `d = -a`.
            neg = Neg [elementwise] { d: Buf; a: Buf };
            /// `d = a + imm` (the client adds when `a` is share-like).
            add_imm = AddImm [elementwise] { d: Buf; a: Buf, imm: u64 };
            /// `d = a · imm` (wrapping; a negative factor is its two's complement).
            mul_imm = MulImm [elementwise] { d: Buf; a: Buf, imm: u64 };
            /// `d = a · 2^bits`.
            shl = Shl [elementwise] { d: Buf; a: Buf, bits: u8 };
            /// `d[b] = a[b] · x[b]` for `batch` products of `m×k` by `k×n` row-major matrices, each
            /// party on its own arrays.
            matmul = MatMul [local] { d: Buf; a: Buf, b: Buf, batch: u32, m: u32, k: u32, n: u32 };
            /// `d[o, i] = Σ_j a[o, j, i]` over an `outer × mid × inner` view of `a`.
            sum = Sum [local] { d: Buf; a: Buf, outer: u32, mid: u32, inner: u32 };
            /// Strided copy: for every index vector `x < shape`,
            /// `d[d_off + x·d_strides] = a[a_off + x·a_strides]`. Covers transpose, slice, concat,
            /// broadcast and gather by public indices.
            copy = Copy [local] { d: Buf; d_off: u32, a: Buf, a_off: u32, shape: Dims, d_strides: Strides, a_strides: Strides };
            /// Post-processing of a `w`-bit masked opening. From the opened
            /// `c = (x + 2^(w-2) + 2^(t-1) + r) mod 2^w` (its low `t` bits not sent: `open`
            /// with `lo = t`) and shares of `rhi = (r mod 2^w) >> t` and `m = bit w-1 of r`:
            /// `c2 = (c >> t) - 2^(w-2-t)` (public), `pk = (1 - bit w-1 of c) · 2^(w-t)`
            /// (public, the wrap of `x + r` modulo `2^w`) and `s = rhi - pk·m` (share), so
            /// that `c2 - s` is within 1.5 ulp of `x / 2^t` for `|x| < 2^(w-2) - 2^(t+1)`.
            trunc_post = TruncPost [elementwise] { c2: Buf, pk: Buf, s: Buf; c: Buf, rhi: Buf, m: Buf, t: u8, w: u8 };
            /// Select by public bits: `d[i] = e[i] ? a[i] : b[i]`.
            sel = Sel [local] { d: Buf; e: Buf, a: Buf, b: Buf };
            /// `d = a ⊕ b` on bits (the client applies a public operand).
            xor_b = XorB [local] { d: Buf; a: Buf, b: Buf };
            /// `d = a ∧ b` on bits; at least one operand public.
            and_b = AndB [local] { d: Buf; a: Buf, b: Buf };
            /// `d = ¬a` on bits (the client flips a share).
            not_b = NotB [local] { d: Buf; a: Buf };
            /// Table lookup: `d[i] = table[i·2^width + ((idx[i] >> shift) mod 2^width)]` with
            /// public `idx`.
            lookup = Lookup [local] { d: Buf; table: Buf, idx: Buf, shift: u8, width: u8 };
            /// `d[i] = bit `bit` of the public `a[i]`.
            bit_of = BitOf [local] { d: Buf; a: Buf, bit: u8 };
            /// Opens the share `a` to both parties modulo `2^bits`, without its low `lo` bits: each
            /// sends bits `lo..bits` of its share, and `d = (Σ (share mod 2^bits) >> lo) · 2^lo`
            /// modulo `2^bits`, which is the opened value with its low `lo` bits cleared and,
            /// with the carry out of the low bits lost, up to `2^lo` less. Completes at the next
            /// `exchange`.
            open = Open [comm] { d: Buf; a: Buf, bits: u8, lo: u8 };
            /// Opens XOR-shared bits to both parties. Completes at the next `exchange`.
            open_b = OpenB [comm] { d: Buf; a: Buf };
            /// Party `from` sends its array `a`; the other party stores it in `d`. Completes at the
            /// next `exchange`.
            send = Send [comm] { d: Buf; a: Buf, from: Party };
            /// Reveals the share `a` to party `to`: the other party sends its share and `to` stores
            /// the sum in `d`. Completes at the next `exchange`.
            reveal = Reveal [comm] { d: Buf; a: Buf, to: Party };
            /// Ends a round: each party sends one message with every queued part and receives the
            /// peer's.
            exchange = Exchange [exchange] { ; };
            /// `d` = shares of a fresh uniform value (both parties from their PRGs).
            dmask = DMask [dealer] { d: Buf; };
            /// `d` = a fresh uniform value known to the owner of the private buffer `d` and to the
            /// dealer.
            dpriv = DPriv [dealer] { d: Buf; };
            /// `d` = shares of `a · b` (broadcast as in `mul`) for dealer-known `a`, `b`, correct
            /// modulo `2^bits`: the dealer sends only that much of the correction, for a consumer
            /// that multiplies `d` by a multiple of `2^(64-bits)` (a wrap correction) and so
            /// never reads the rest.
            dprod = DProd [dealer] { d: Buf; a: Buf, b: Buf, inner: u32, bits: u8 };
            /// `d` = shares of the batched matrix product of dealer-known `a` and `b`.
            dmatmul = DMatMul [dealer] { d: Buf; a: Buf, b: Buf, batch: u32, m: u32, k: u32, n: u32 };
            /// `hi` = shares of `(a mod 2^w) >> t`, `msb` = shares of bit `w-1` of `a`.
            dtrunc = DTrunc [dealer] { hi: Buf, msb: Buf; a: Buf, t: u8, w: u8 };
            /// `d` = fresh uniform XOR-shared bits.
            dbits = DBits [dealer] { d: Buf; };
            /// `d` = XOR shares of `a ∧ b` for dealer-known bits.
            dand = DAnd [dealer] { d: Buf; a: Buf, b: Buf };
            /// Comparison tables for the digit `v = (a >> shift) mod 2^width` of each element of
            /// the dealer-known `a`: XOR shares of `lt[i·2^w + c] = [c < v]` and `eq[...] = [c = v]`.
            dtable = DTable [dealer] { lt: Buf, eq: Buf; a: Buf, shift: u8, width: u8 };
            /// `d` = XOR shares of bit `bit` of each element of the dealer-known `a`.
            dbit = DBit [dealer] { d: Buf; a: Buf, bit: u8 };
            /// `d` = arithmetic shares (0 or 1 in Z_2^64) of the dealer-known bits `a`.
            dbit2a = DBit2A [dealer] { d: Buf; a: Buf };
            /// Inclusive prefix sum along the middle axis of an `outer × mid × inner` view:
            /// `d[o, j, i] = Σ_{j' ≤ j} a[o, j', i]`.
            cumsum = CumSum [local] { d: Buf; a: Buf, outer: u32, mid: u32, inner: u32 };
            /// Sets the live sequence length of a program with a dynamic section (see
            /// [`crate::program::Dynamic`]) to the public count `n = a[0] >> frac`,
            /// `1 ≤ n ≤` the current length: every later body instruction and every buffer then
            /// takes its size at `n`. The dealer learns `n` from the client.
            setlen = SetLen [control] { ; a: Buf, frac: u8 };
            /// The four cases of a final AND gate, as arithmetic shares: for dealer-known bits
            /// `a`, `b`, `g`, `k` of length `n`, `d[(2·D + E)·n + i]` = shares (0 or 1 in
            /// Z_2^64) of `g_i ⊕ k_i ⊕ ((D ⊕ a_i) ∧ (E ⊕ b_i))`, for the two opened Beaver
            /// differences `D`, `E` of the gate (chosen locally afterwards, with no round).
            dcase = DCase [dealer] { d: Buf; a: Buf, b: Buf, g: Buf, k: Buf };
        }
    };
}

macro_rules! define_instr {
    ($( $(#[$attr:meta])* $snake:ident = $Camel:ident [$class:ident]
        { $($wr:ident : $wrt:ident),* ; $($rd:ident : $rdt:ident),* } ;)*) => {
        /// One bytecode instruction (see the module docs for conventions).
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Instr {
            $( $(#[$attr])* $Camel { $($wr: $wrt,)* $($rd: $rdt),* }, )*
        }

        /// Every instruction name, indexed by opcode.
        pub const NAMES: &[&str] = &[$(stringify!($snake)),*];

        impl Instr {
            /// The instruction's name (its disassembly mnemonic).
            pub fn name(&self) -> &'static str {
                match self { $( Instr::$Camel { .. } => stringify!($snake), )* }
            }

            /// The opcode: the instruction's position in the list.
            pub fn opcode(&self) -> u8 {
                #[allow(unused_assignments)]
                let mut i = 0u8;
                $(
                    if let Instr::$Camel { .. } = self { return i; }
                    i += 1;
                )*
                unreachable!()
            }

            /// Appends the encoding: opcode byte, then each field.
            pub fn encode(&self, w: &mut Writer) {
                w.bytes.push(self.opcode());
                match self {
                    $( Instr::$Camel { $($wr,)* $($rd),* } => {
                        $( Operand::encode($wr, w); )* $( Operand::encode($rd, w); )*
                    } )*
                }
            }

            /// Reads one instruction.
            pub fn decode(r: &mut Reader) -> Result<Instr, DecodeError> {
                let at = r.position();
                let op = r.u8()?;
                #[allow(unused_assignments)]
                let mut i = 0u8;
                $(
                    if op == i {
                        // Fields decode in the order they are written: a struct expression
                        // evaluates its fields in source order.
                        return Ok(Instr::$Camel {
                            $($wr: <$wrt as Operand>::decode(r)?,)*
                            $($rd: <$rdt as Operand>::decode(r)?,)*
                        });
                    }
                    i += 1;
                )*
                Err(DecodeError::Malformed { at, what: format!("unknown opcode {op}") })
            }

            /// Disassembly: the mnemonic and `field=value` pairs.
            pub fn disas(&self) -> String {
                match self {
                    $( Instr::$Camel { $($wr,)* $($rd),* } => {
                        let parts: Vec<String> = vec![
                            $(format!("{}={}", stringify!($wr), Operand::disas($wr)),)*
                            $(format!("{}={}", stringify!($rd), Operand::disas($rd)),)*
                        ];
                        if parts.is_empty() { stringify!($snake).to_string() }
                        else { format!("{} {}", stringify!($snake), parts.join(" ")) }
                    } )*
                }
            }

            /// The instruction's size fields (every `u32` field, every entry of `Dims` and
            /// `Strides`), in field order: what a dynamic program's polynomials patch.
            pub fn slots(&self) -> Vec<i64> {
                let mut v = Vec::new();
                match self {
                    $( Instr::$Camel { $($wr,)* $($rd),* } => {
                        $( Operand::slots($wr, &mut v); )* $( Operand::slots($rd, &mut v); )*
                    } )*
                }
                v
            }

            /// Mutable access to [`Instr::slots`], in the same order.
            pub fn slots_mut(&mut self) -> Vec<SlotMut<'_>> {
                let mut v = Vec::new();
                match self {
                    $( Instr::$Camel { $($wr,)* $($rd),* } => {
                        $( Operand::slots_mut($wr, &mut v); )* $( Operand::slots_mut($rd, &mut v); )*
                    } )*
                }
                v
            }

            /// Buffers the instruction reads and writes, as `(buffer, written)` pairs.
            pub fn buffers(&self) -> Vec<(Buf, bool)> {
                let mut v = Vec::new();
                self.each_buffer(|b, w| v.push((b, w)));
                v
            }

            /// Calls `f(buffer, written)` for each buffer operand in field order, allocating
            /// nothing (the lifetime analysis and the dealer walk every instruction).
            #[inline]
            pub fn each_buffer(&self, mut f: impl FnMut(Buf, bool)) {
                match self {
                    $( Instr::$Camel { $($wr,)* $($rd),* } => {
                        $( f(*$wr, true); )*
                        $( if let Some(b) = MaybeBuf::as_buf($rd) { f(b, false); } )*
                    } )*
                }
            }
        }
    };
}

/// Which read operands are buffers (every written operand is one).
trait MaybeBuf {
    fn as_buf(&self) -> Option<Buf>;
}
impl MaybeBuf for Buf {
    fn as_buf(&self) -> Option<Buf> {
        Some(*self)
    }
}
macro_rules! not_buf { ($($t:ty),*) => { $( impl MaybeBuf for $t { fn as_buf(&self) -> Option<Buf> { None } } )* } }
not_buf!(u8, u32, u64, Party, Dims, Strides);

use crate::operand::{Buf, Dims, Operand, Party, Reader, SlotMut, Strides, Writer};
use crate::DecodeError;
for_each_op!(define_instr);

#[cfg(test)]
mod tests {
    use super::*;

    fn all_samples() -> Vec<Instr> {
        let b = |i| Buf(i);
        vec![
            Instr::Add { d: b(0), a: b(1), b: b(2), inner: 3 },
            Instr::Sub { d: b(0), a: b(1), b: b(2), inner: 1 },
            Instr::Mul { d: b(0), a: b(1), b: b(2), inner: 1 },
            Instr::Neg { d: b(0), a: b(1) },
            Instr::AddImm { d: b(0), a: b(1), imm: u64::MAX },
            Instr::MulImm { d: b(0), a: b(1), imm: 7 },
            Instr::Shl { d: b(0), a: b(1), bits: 16 },
            Instr::MatMul { d: b(0), a: b(1), b: b(2), batch: 2, m: 3, k: 4, n: 5 },
            Instr::Sum { d: b(0), a: b(1), outer: 2, mid: 3, inner: 4 },
            Instr::Copy {
                d: b(0),
                d_off: 1,
                a: b(1),
                a_off: 2,
                shape: Dims(vec![2, 3]),
                d_strides: Strides(vec![3, 1]),
                a_strides: Strides(vec![1, -2]),
            },
            Instr::TruncPost {
                c2: b(0),
                pk: b(1),
                s: b(2),
                c: b(3),
                rhi: b(4),
                m: b(5),
                t: 16,
                w: 48,
            },
            Instr::Sel { d: b(0), e: b(1), a: b(2), b: b(3) },
            Instr::XorB { d: b(0), a: b(1), b: b(2) },
            Instr::AndB { d: b(0), a: b(1), b: b(2) },
            Instr::NotB { d: b(0), a: b(1) },
            Instr::Lookup { d: b(0), table: b(1), idx: b(2), shift: 8, width: 4 },
            Instr::BitOf { d: b(0), a: b(1), bit: 31 },
            Instr::Open { d: b(0), a: b(1), bits: 48, lo: 16 },
            Instr::OpenB { d: b(0), a: b(1) },
            Instr::Send { d: b(0), a: b(1), from: Party::Server },
            Instr::Reveal { d: b(0), a: b(1), to: Party::Client },
            Instr::Exchange {},
            Instr::DMask { d: b(0) },
            Instr::DPriv { d: b(0) },
            Instr::DProd { d: b(0), a: b(1), b: b(2), inner: 1, bits: 20 },
            Instr::DMatMul { d: b(0), a: b(1), b: b(2), batch: 1, m: 2, k: 3, n: 4 },
            Instr::DTrunc { hi: b(0), msb: b(1), a: b(2), t: 16, w: 48 },
            Instr::DBits { d: b(0) },
            Instr::DAnd { d: b(0), a: b(1), b: b(2) },
            Instr::DTable { lt: b(0), eq: b(1), a: b(2), shift: 8, width: 4 },
            Instr::DBit { d: b(0), a: b(1), bit: 63 },
            Instr::DBit2A { d: b(0), a: b(1) },
            Instr::CumSum { d: b(0), a: b(1), outer: 2, mid: 3, inner: 4 },
            Instr::SetLen { a: b(0), frac: 0 },
            Instr::DCase { d: b(0), a: b(1), b: b(2), g: b(3), k: b(4) },
        ]
    }

    #[test]
    fn every_instruction_round_trips_and_has_a_sample() {
        let samples = all_samples();
        assert_eq!(samples.len(), NAMES.len(), "add a sample for every instruction");
        for (i, ins) in samples.iter().enumerate() {
            assert_eq!(ins.opcode() as usize, i);
            assert_eq!(ins.name(), NAMES[i]);
            let mut w = Writer::default();
            ins.encode(&mut w);
            let mut r = Reader::new(&w.bytes);
            assert_eq!(&Instr::decode(&mut r).unwrap(), ins);
            assert!(r.at_end());
            // Every strict prefix is a clean error, never a panic.
            for cut in 0..w.bytes.len() {
                assert!(Instr::decode(&mut Reader::new(&w.bytes[..cut])).is_err());
            }
        }
    }

    #[test]
    fn disassembly_is_readable() {
        let ins = Instr::Open { d: Buf(3), a: Buf(4), bits: 48, lo: 16 };
        assert_eq!(ins.disas(), "open d=b3 a=b4 bits=48 lo=16");
        assert_eq!(Instr::Exchange {}.disas(), "exchange");
        assert_eq!(ins.buffers(), vec![(Buf(3), true), (Buf(4), false)]);
    }

    #[test]
    fn slots_list_sizes_in_field_order_and_patch_in_place() {
        let mut ins = Instr::Copy {
            d: Buf(0),
            d_off: 1,
            a: Buf(1),
            a_off: 2,
            shape: Dims(vec![3, 4]),
            d_strides: Strides(vec![4, 1]),
            a_strides: Strides(vec![-5, 1]),
        };
        assert_eq!(ins.slots(), vec![1, 2, 3, 4, 4, 1, -5, 1]);
        for (i, s) in ins.slots_mut().into_iter().enumerate() {
            s.set(10 + i as i64).unwrap();
        }
        assert_eq!(ins.slots(), (10..18).collect::<Vec<i64>>());
        let mut m = Instr::MatMul { d: Buf(0), a: Buf(1), b: Buf(2), batch: 1, m: 2, k: 3, n: 4 };
        assert!(m.slots_mut().remove(0).set(-1).is_err(), "a u32 slot refuses negatives");
        assert_eq!(Instr::Exchange {}.slots(), Vec::<i64>::new());
    }
}
