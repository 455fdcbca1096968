//! A fused kernel: one loop over `n` elements computing a straight-line expression DAG from
//! input buffers and storing some of its values. The party's role is already resolved (which
//! operands the client adds, which products are zero), so a kernel is plain Z_2^64 arithmetic.

use veil_isa::Buf;

/// A value of the kernel's DAG: an index into [`Sig::ops`].
pub type V = u32;

/// How element `i` of the loop reads an input buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
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
        match self.sig.inputs.get(ptr) {
            Some(Access::Elem) | None => self.n,
            Some(Access::Splat) => 1,
            Some(Access::Bcast { len, .. }) => *len as usize,
        }
    }
}
