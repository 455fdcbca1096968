//! Cranelift code generation for one kernel signature.
//!
//! The function is `extern "C" fn(ptrs: *const *mut u64, n: u64)`: `ptrs` holds the inputs'
//! then the outputs' base pointers, then `len` and `inner` of each broadcast input. Kernels
//! without strided broadcasts run an `i64x2` loop over element pairs, then a scalar loop for
//! the odd element; broadcasts keep a per-input index and counter in the scalar loop (no
//! division per element).

use super::kernel::{Access, Op, Sig, V};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, InstBuilder, MemFlagsData, Type, UserFuncName, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

/// A compiled kernel.
pub type KernelFn = unsafe extern "C" fn(*const *mut u64, u64);

/// Why a kernel did not compile (it then runs in the interpreter).
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// The host is not a Cranelift target, or a flag was rejected.
    #[error("no JIT for this host: {0}")]
    Host(String),
    /// Cranelift rejected the function.
    #[error("kernel did not compile: {0}")]
    Compile(String),
    /// The signature refers to a value or input that does not exist.
    #[error("malformed kernel: {0}")]
    Malformed(&'static str),
}

/// The code generator and the memory its functions live in.
pub struct Codegen {
    /// Always `Some` until drop frees its memory.
    module: Option<JITModule>,
    fctx: FunctionBuilderContext,
    next: u32,
}

impl Codegen {
    /// A code generator for this machine (its SIMD features detected).
    pub fn new() -> Result<Codegen, JitError> {
        let mut flags = settings::builder();
        let host = |e: &dyn std::fmt::Display| JitError::Host(e.to_string());
        flags.set("opt_level", "speed").map_err(|e| host(&e))?;
        flags.set("use_colocated_libcalls", "false").map_err(|e| host(&e))?;
        flags.set("is_pic", "false").map_err(|e| host(&e))?;
        let isa = cranelift_native::builder()
            .map_err(|e| host(&e))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| host(&e))?;
        let module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        Ok(Codegen { module: Some(module), fctx: FunctionBuilderContext::new(), next: 0 })
    }

    /// Compiles `sig`, with the vector loop when `simd` (and the signature allows it).
    pub fn compile(&mut self, sig: &Sig, simd: bool) -> Result<KernelFn, JitError> {
        check(sig)?;
        let err = |e: &dyn std::fmt::Display| JitError::Compile(e.to_string());
        let module = self.module.as_mut().ok_or(JitError::Malformed("code generator dropped"))?;
        let ptr = module.target_config().pointer_type();
        let mut ctx = module.make_context();
        ctx.func.signature.params.push(AbiParam::new(ptr));
        ctx.func.signature.params.push(AbiParam::new(types::I64));
        let name = format!("k{}", self.next);
        self.next += 1;
        let id = module
            .declare_function(&name, Linkage::Local, &ctx.func.signature)
            .map_err(|e| err(&e))?;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut self.fctx);
            emit(&mut b, sig, ptr, simd);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        module.define_function(id, &mut ctx).map_err(|e| err(&e))?;
        module.clear_context(&mut ctx);
        module.finalize_definitions().map_err(|e| err(&e))?;
        let code = module.get_finalized_function(id);
        // SAFETY: the function was built with exactly this signature (two pointer-sized
        // integer parameters, no result) and the default calling convention of the host,
        // which is the C convention.
        Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code) })
    }
}

impl Drop for Codegen {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the function pointers handed out are kept next to this code generator
            // (in the kernel cache) and are not called after it is dropped.
            unsafe { module.free_memory() };
        }
    }
}

/// Rejects signatures whose operands point forward or out of range, so codegen cannot panic.
fn check(sig: &Sig) -> Result<(), JitError> {
    let ok = |v: V, j: usize| (v as usize) < j;
    for (j, op) in sig.ops.iter().enumerate() {
        let fine = match *op {
            Op::Load(k) => (k as usize) < sig.inputs.len(),
            Op::Const(_) => true,
            Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::And(a, b) => ok(a, j) && ok(b, j),
            Op::Neg(a) => ok(a, j),
            Op::Shl(a, s) | Op::Ushr(a, s) => ok(a, j) && s < 64,
        };
        if !fine {
            return Err(JitError::Malformed("operand out of range"));
        }
    }
    if sig.outputs.iter().any(|&v| v as usize >= sig.ops.len()) {
        return Err(JitError::Malformed("output out of range"));
    }
    Ok(())
}

/// Loop-invariant state: base pointers and hoisted values.
struct Pre {
    bases: Vec<Value>,
    /// Per op: the value computed once before the loops (constants, splatted inputs).
    hoisted: Vec<Option<Value>>,
}

fn emit(b: &mut FunctionBuilder, sig: &Sig, ptr: Type, simd: bool) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (ptrs, n) = (b.block_params(entry)[0], b.block_params(entry)[1]);
    let flags = MemFlagsData::trusted();
    let nptr = sig.inputs.len() + sig.outputs.len();
    let bases: Vec<Value> =
        (0..nptr).map(|k| b.ins().load(ptr, flags, ptrs, (8 * k) as i32)).collect();
    let bcast: Vec<usize> =
        (0..sig.inputs.len()).filter(|&k| sig.inputs[k] == Access::Bcast).collect();
    // Each broadcast's `len` and `inner`, after the pointers.
    let lens: Vec<(Value, Value)> = (0..bcast.len())
        .map(|j| {
            let at = (8 * (nptr + 2 * j)) as i32;
            let len = b.ins().load(types::I64, flags, ptrs, at);
            (len, b.ins().load(types::I64, flags, ptrs, at + 8))
        })
        .collect();
    let vector = simd && bcast.is_empty();

    // Scalars that do not depend on the element: constants and one-element inputs. Splat
    // inputs are only read when the loop runs at least once, which the guard below ensures.
    let body_blk = b.create_block();
    let exit = b.create_block();
    let zero = b.ins().iconst(types::I64, 0);
    b.ins().brif(n, body_blk, &[], exit, &[]);
    b.switch_to_block(body_blk);
    let mut scalar = Pre { bases: bases.clone(), hoisted: vec![None; sig.ops.len()] };
    for (j, op) in sig.ops.iter().enumerate() {
        scalar.hoisted[j] = match *op {
            Op::Const(c) => Some(b.ins().iconst(types::I64, c as i64)),
            Op::Load(k) if sig.inputs[k as usize] == Access::Splat => {
                Some(b.ins().load(types::I64, flags, bases[k as usize], 0))
            }
            _ => None,
        };
    }

    let scalar_start = if vector {
        let vt = types::I64X2;
        let mut vpre = Pre { bases: bases.clone(), hoisted: vec![None; sig.ops.len()] };
        for j in 0..sig.ops.len() {
            vpre.hoisted[j] = scalar.hoisted[j].map(|x| b.ins().splat(vt, x));
        }
        let pairs = b.ins().band_imm_s(n, -2i64);
        let head = b.create_block();
        let vbody = b.create_block();
        let vexit = b.create_block();
        b.append_block_param(head, types::I64);
        b.ins().jump(head, &[BlockArg::Value(zero)]);
        b.switch_to_block(head);
        let i = b.block_params(head)[0];
        let more = b.ins().icmp(IntCC::UnsignedLessThan, i, pairs);
        b.ins().brif(more, vbody, &[], vexit, &[]);
        b.switch_to_block(vbody);
        let off = b.ins().ishl_imm_u(i, 3i64);
        let vflags = MemFlagsData::new().with_notrap();
        body(b, sig, &vpre, vt, off, vflags, &[]);
        let next = b.ins().iadd_imm_u(i, 2i64);
        b.ins().jump(head, &[BlockArg::Value(next)]);
        b.switch_to_block(vexit);
        pairs
    } else {
        zero
    };

    // Scalar loop: i from scalar_start to n, with (index, counter) per broadcast input.
    let head = b.create_block();
    let sbody = b.create_block();
    b.append_block_param(head, types::I64);
    for _ in &bcast {
        b.append_block_param(head, types::I64);
        b.append_block_param(head, types::I64);
    }
    let mut init = vec![BlockArg::Value(scalar_start)];
    for _ in &bcast {
        init.push(BlockArg::Value(zero));
        init.push(BlockArg::Value(zero));
    }
    b.ins().jump(head, &init);
    b.switch_to_block(head);
    let params: Vec<Value> = b.block_params(head).to_vec();
    let i = params[0];
    let more = b.ins().icmp(IntCC::UnsignedLessThan, i, n);
    b.ins().brif(more, sbody, &[], exit, &[]);
    b.switch_to_block(sbody);
    let off = b.ins().ishl_imm_u(i, 3i64);
    let idx: Vec<(usize, Value)> =
        bcast.iter().enumerate().map(|(j, &k)| (k, params[1 + 2 * j])).collect();
    body(b, sig, &scalar, types::I64, off, flags, &idx);
    let mut next = vec![BlockArg::Value(b.ins().iadd_imm_u(i, 1i64))];
    for (j, &(len, inner)) in lens.iter().enumerate() {
        let (ix, cnt) = (params[1 + 2 * j], params[2 + 2 * j]);
        let c1 = b.ins().iadd_imm_u(cnt, 1i64);
        let wrap = b.ins().icmp(IntCC::Equal, c1, inner);
        let step = b.ins().uextend(types::I64, wrap);
        let ix = b.ins().iadd(ix, step);
        let cnt = b.ins().select(wrap, zero, c1);
        let end = b.ins().icmp(IntCC::Equal, ix, len);
        let ix = b.ins().select(end, zero, ix);
        next.push(BlockArg::Value(ix));
        next.push(BlockArg::Value(cnt));
    }
    b.ins().jump(head, &next);
    b.switch_to_block(exit);
    b.ins().return_(&[]);
}

/// One iteration at byte offset `off` (element `i` for scalars, elements `i, i+1` for
/// vectors): every op, then every store, so all loads of an element precede its stores.
fn body(
    b: &mut FunctionBuilder,
    sig: &Sig,
    pre: &Pre,
    ty: Type,
    off: Value,
    flags: MemFlagsData,
    bcast_idx: &[(usize, Value)],
) {
    let mut vals: Vec<Value> = Vec::with_capacity(sig.ops.len());
    for (j, op) in sig.ops.iter().enumerate() {
        if let Some(h) = pre.hoisted[j] {
            vals.push(h);
            continue;
        }
        let g = |v: V| vals[v as usize];
        let v = match *op {
            Op::Load(k) => {
                let k = k as usize;
                let o = match sig.inputs[k] {
                    Access::Bcast => match bcast_idx.iter().find(|(x, _)| *x == k) {
                        Some(&(_, ix)) => b.ins().ishl_imm_u(ix, 3i64),
                        None => off,
                    },
                    _ => off,
                };
                let addr = b.ins().iadd(pre.bases[k], o);
                b.ins().load(ty, flags, addr, 0)
            }
            Op::Const(_) => unreachable!("constants are hoisted"),
            Op::Add(x, y) => b.ins().iadd(g(x), g(y)),
            Op::Sub(x, y) => b.ins().isub(g(x), g(y)),
            Op::Mul(x, y) => b.ins().imul(g(x), g(y)),
            Op::Neg(x) => b.ins().ineg(g(x)),
            Op::And(x, y) => b.ins().band(g(x), g(y)),
            Op::Shl(x, s) => {
                let s = b.ins().iconst(types::I64, s as i64);
                b.ins().ishl(g(x), s)
            }
            Op::Ushr(x, s) => {
                let s = b.ins().iconst(types::I64, s as i64);
                b.ins().ushr(g(x), s)
            }
        };
        vals.push(v);
    }
    let ni = sig.inputs.len();
    for (j, &v) in sig.outputs.iter().enumerate() {
        let addr = b.ins().iadd(pre.bases[ni + j], off);
        b.ins().store(flags, vals[v as usize], addr, 0);
    }
}
