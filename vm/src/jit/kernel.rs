//! A fused kernel: one loop over `n` elements computing a straight-line expression DAG from
//! input buffers and storing some of its values. The party's role is already resolved (which
//! operands the client adds, which products are zero), so a kernel is plain Z_2^64 arithmetic.

use veil_isa::Buf;

/// A value of the kernel's DAG: an index into [`Sig::ops`].
pub type V = u32;

/// How element `i` of the loop reads an input buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Read {
    /// `x[i]` (the buffer has `n` elements).
    Elem,
    /// `x[0]` (a one-element buffer broadcast over the loop).
    Splat,
    /// `x[(i / inner) % len]`, the VM's broadcast rule.
    Bcast {
        /// Elements of the buffer.
        len: u32,
        /// Consecutive loop elements that share one buffer element.
        inner: u32,
    },
}

/// What the generated code knows of a [`Read`]: its pattern, not its lengths. A broadcast's
/// lengths are arguments of the call, so a pruned instance, whose broadcasts shrink with the
/// sequence, runs the code compiled at the full length.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `x[i]`.
    Elem,
    /// `x[0]`.
    Splat,
    /// `x[(i / inner) % len]`, `len` and `inner` passed after the pointers.
    Bcast,
}

impl Read {
    /// The pattern the code is compiled for.
    pub fn access(self) -> Access {
        match self {
            Read::Elem => Access::Elem,
            Read::Splat => Access::Splat,
            Read::Bcast { .. } => Access::Bcast,
        }
    }
}

/// One operation of the DAG; operands are earlier values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// The current element of input `k`.
    Load(u32),
    /// A constant.
    Const(u64),
    /// Wrapping sum.
    Add(V, V),
    /// Wrapping difference.
    Sub(V, V),
    /// Wrapping product.
    Mul(V, V),
    /// Wrapping negation.
    Neg(V),
    /// Bitwise and.
    And(V, V),
    /// Left shift by a constant below 64.
    Shl(V, u8),
    /// Logical right shift by a constant below 64.
    Ushr(V, u8),
}

/// What the generated code depends on: equal signatures share one compiled function, whatever
/// the buffers and the length (the 12 identical layers of a model compile once).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sig {
    /// Access pattern of each input, in pointer order.
    pub inputs: Vec<Access>,
    /// The DAG.
    pub ops: Vec<Op>,
    /// The value stored to each output, in pointer order after the inputs.
    pub outputs: Vec<V>,
}

/// A kernel instance: a signature bound to buffers and a length.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The code's shape.
    pub sig: Sig,
    /// How each input is read, with a broadcast's lengths (in pointer order).
    pub reads: Vec<Read>,
    /// Input buffers, then output buffers (the pointer array the code receives).
    pub bufs: Vec<Buf>,
    /// Elements of the loop.
    pub n: usize,
    /// Indices of the fused instructions in their section, in program order (the
    /// interpreter runs exactly these when the kernel did not compile).
    pub members: Vec<usize>,
}

impl Kernel {
    /// The buffer length each pointer must have for the code to stay in bounds.
    pub fn required_len(&self, ptr: usize) -> usize {
        match self.reads.get(ptr) {
            Some(Read::Elem) | None => self.n,
            Some(Read::Splat) => 1,
            Some(Read::Bcast { len, .. }) => *len as usize,
        }
    }

    /// The arguments after the pointers: `len` and `inner` of each broadcast input, in order.
    pub fn bcast_args(&self) -> impl Iterator<Item = u64> + '_ {
        self.reads
            .iter()
            .flat_map(|r| match *r {
                Read::Bcast { len, inner } => Some([len as u64, inner as u64]),
                _ => None,
            })
            .flatten()
    }
}
