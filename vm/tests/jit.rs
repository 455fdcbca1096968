//! Differential test of the JIT: random programs of local instructions (with dealer draws,
//! copies and sums in between, which kernels must not be reordered across when they touch
//! the same buffers) run with the JIT and with the interpreter, for each party; every buffer
//! must be bit-identical.
#![cfg(feature = "jit")]

mod common;

use common::Rng;
use veil_isa::validate::validate;
use veil_isa::{BufDecl, ConstInit, Dims, Instr, IoDecl, Kind, Party, Program, Strides};
use veil_vm::material::Material;
use veil_vm::net::local::LocalTransport;
use veil_vm::{PartyVm, Values};

const KINDS: [Kind; 4] =
    [Kind::Share, Kind::Public, Kind::Private(Party::Client), Kind::Private(Party::Server)];

/// Buffer lengths: two loop lengths (one odd, for the scalar tail) and broadcast operands.
const MAIN: [u32; 2] = [48, 35];
const SMALL: [u32; 7] = [1, 3, 4, 6, 12, 5, 7];

struct Gen {
    rng: Rng,
    prog: Program,
}

impl Gen {
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.rng.next() % xs.len() as u64) as usize]
    }

    fn bufs_where(&self, f: impl Fn(&BufDecl) -> bool) -> Vec<veil_isa::Buf> {
        (0..self.prog.buffers.len())
            .filter(|&i| f(&self.prog.buffers[i]))
            .map(|i| veil_isa::Buf(i as u32))
            .collect()
    }

    fn any(&mut self, len: Option<u32>) -> veil_isa::Buf {
        let c = self.bufs_where(|b| len.is_none_or(|l| b.len == l));
        self.pick(&c)
    }

    fn imm(&mut self) -> u64 {
        match self.rng.next() % 4 {
            0 => self.rng.next(),
            1 => self.rng.next() % 7,
            2 => (self.rng.next() % 7).wrapping_neg(),
            _ => 1 << (self.rng.next() % 64),
        }
    }

    fn candidate(&mut self) -> Instr {
        let n = self.pick(&MAIN);
        let d = self.any(Some(n));
        let a = self.any(Some(n));
        let b = if self.rng.next().is_multiple_of(3) {
            self.any(Some(n))
        } else {
            let cands = self.bufs_where(|x| n.is_multiple_of(x.len));
            self.pick(&cands)
        };
        let lb = self.prog.buffers[b.0 as usize].len;
        let inners: Vec<u32> = (1..=n).filter(|i| n.is_multiple_of(lb * i)).collect();
        let inner = self.pick(&inners);
        let bits = (self.rng.next() % 64) as u8;
        match self.rng.next() % 14 {
            0 | 1 => Instr::Add { d, a, b, inner },
            2 | 3 => Instr::Sub { d, a, b, inner },
            4 | 5 => Instr::Mul { d, a, b, inner },
            6 => Instr::Neg { d, a },
            7 => Instr::AddImm { d, a, imm: self.imm() },
            8 => Instr::MulImm { d, a, imm: self.imm() },
            9 => Instr::Shl { d, a, bits },
            10 => {
                let w = self.pick(&[64u8, 64, 48, 20, 3]);
                let t = (self.rng.next() % (w as u64 - 1)) as u8;
                let t = if w == 64 && t == 0 { 16 } else { t };
                let pubs = self.bufs_where(|x| x.len == n && x.kind == Kind::Public);
                let shares = self.bufs_where(|x| x.len == n && x.kind.is_share_like());
                Instr::TruncPost {
                    c2: self.pick(&pubs),
                    pk: self.pick(&pubs),
                    s: self.pick(&shares),
                    c: self.pick(&pubs),
                    rhi: self.pick(&shares),
                    m: self.pick(&shares),
                    t,
                    w,
                }
            }
            11 => Instr::DMask { d },
            12 => Instr::Sum { d, a: b, outer: 1, mid: 1, inner: lb },
            _ => {
                // A partial write: the first `k` elements of `d` from `a`, reversed.
                let k = 1 + (self.rng.next() % n as u64) as u32;
                Instr::Copy {
                    d,
                    d_off: 0,
                    a,
                    a_off: k - 1,
                    shape: Dims(vec![k]),
                    d_strides: Strides(vec![1]),
                    a_strides: Strides(vec![-1]),
                }
            }
        }
    }
}

type Data = Vec<(String, Values)>;

fn random_program(seed: u64, instrs: usize) -> (Program, Data, Data) {
    let mut g = Gen { rng: Rng(seed), prog: Program { frac_bits: 16, ..Program::default() } };
    let mut client = Vec::new();
    let mut server = Vec::new();
    for len in MAIN.iter().chain(MAIN.iter()).chain(MAIN.iter()).chain(SMALL.iter()) {
        for kind in KINDS {
            let buf = veil_isa::Buf(g.prog.buffers.len() as u32);
            g.prog.buffers.push(BufDecl { kind, len: *len });
            let data: Vec<i64> = (0..*len).map(|_| g.rng.next() as i64).collect();
            let io =
                |name: String, party| IoDecl { name, buf, party, frac_bits: 0, shape: vec![*len] };
            match kind {
                Kind::Public => g
                    .prog
                    .consts
                    .push(ConstInit { buf, data: data.iter().map(|&x| x as u64).collect() }),
                Kind::Private(Party::Client) => {
                    g.prog.inputs.push(io(format!("x{}", buf.0), Party::Client));
                    client.push((format!("x{}", buf.0), Values::I64(data)));
                }
                Kind::Private(Party::Server) => {
                    g.prog.weights.push(io(format!("w{}", buf.0), Party::Server));
                    server.push((format!("w{}", buf.0), Values::I64(data)));
                }
                _ => g.prog.body.push(Instr::DMask { d: buf }),
            }
        }
    }
    g.prog.tags.push(veil_isa::Tag { layer: "t".into(), op: "t".into() });
    let mut tries = 0;
    while g.prog.body.len() < instrs && tries < 50 * instrs {
        tries += 1;
        let ins = g.candidate();
        g.prog.body.push(ins);
        g.prog.body_tags = vec![0; g.prog.body.len()];
        if validate(&g.prog).is_err() {
            g.prog.body.pop();
        }
    }
    g.prog.body_tags = vec![0; g.prog.body.len()];
    validate(&g.prog).expect("generated programs are valid");
    (g.prog, client, server)
}

/// Every buffer of party `me` after setup and two body runs, with or without the JIT.
fn run(prog: &Program, me: Party, data: &[(String, Values)], jit: bool) -> Vec<Vec<u64>> {
    let (t, _peer) = LocalTransport::pair();
    let material = Material::new(me, [7; 16], None);
    let mut vm = PartyVm::new(prog, me, material, Box::new(t), 1 << 30).expect("vm");
    vm.set_jit(jit);
    // The whole buffer table is compared: no value may go back to the pool.
    vm.keep_values(true);
    match me {
        Party::Client => vm.set_inputs(data).expect("inputs"),
        Party::Server => vm.load_weights(data).expect("weights"),
    }
    vm.run_setup().expect("setup");
    vm.run_body().expect("body");
    vm.run_body().expect("second body");
    if jit {
        let r = vm.report();
        assert!(r.jit_kernels > 0, "the generated programs always have kernels");
        assert!(r.jit_runs.0 > 0, "kernels ran compiled");
        assert_eq!(r.jit_runs.1, 0, "no kernel fell back to the interpreter");
    }
    (0..prog.buffers.len())
        .map(|i| vm.raw_buffer(veil_isa::Buf(i as u32)).expect("buffer").to_vec())
        .collect()
}

#[test]
fn random_local_programs_match_the_interpreter_bit_for_bit() {
    for seed in 1..=60u64 {
        let (prog, client, server) = random_program(seed * 0x9E37_79B9, 80);
        for (me, data) in [(Party::Client, &client), (Party::Server, &server)] {
            let interp = run(&prog, me, data, false);
            let jit = run(&prog, me, data, true);
            for (i, (x, y)) in interp.iter().zip(&jit).enumerate() {
                assert!(
                    x == y,
                    "seed {seed}, {me:?}: buffer b{i} differs between JIT and interpreter"
                );
            }
        }
    }
}

#[test]
fn a_long_chain_fuses_into_one_kernel() {
    // x -> ((x + 3) · 5 - x) << 2, then negated: one kernel, intermediate buffers not stored.
    let mut p = Program { frac_bits: 16, ..Program::default() };
    let n = 1001;
    for _ in 0..4 {
        p.buffers.push(BufDecl { kind: Kind::Private(Party::Client), len: n });
    }
    let b = veil_isa::Buf;
    p.inputs.push(IoDecl {
        name: "x".into(),
        buf: b(0),
        party: Party::Client,
        frac_bits: 0,
        shape: vec![n],
    });
    p.tags.push(veil_isa::Tag { layer: "t".into(), op: "t".into() });
    p.body = vec![
        Instr::AddImm { d: b(1), a: b(0), imm: 3 },
        Instr::MulImm { d: b(2), a: b(1), imm: 5 },
        Instr::Sub { d: b(1), a: b(2), b: b(0), inner: 1 },
        Instr::Shl { d: b(2), a: b(1), bits: 2 },
        Instr::Neg { d: b(3), a: b(2) },
    ];
    p.body_tags = vec![0; p.body.len()];
    validate(&p).expect("valid");
    let x: Vec<i64> = (0..n as i64).map(|i| i * 7919 - 4_000_000).collect();
    let data = vec![("x".to_string(), Values::I64(x.clone()))];
    let (t, _peer) = LocalTransport::pair();
    let mut vm = PartyVm::new(
        &p,
        Party::Client,
        Material::new(Party::Client, [1; 16], None),
        Box::new(t),
        1 << 30,
    )
    .expect("vm");
    vm.keep_values(true);
    vm.set_inputs(&data).expect("inputs");
    vm.run_body().expect("body");
    assert_eq!(vm.report().jit_kernels, 1);
    assert_eq!(vm.report().jit_runs, (1, 0), "the kernel compiled and ran");
    let want: Vec<u64> = x
        .iter()
        .map(|&v| {
            let v = v as u64;
            (((v.wrapping_add(3)).wrapping_mul(5)).wrapping_sub(v) << 2).wrapping_neg()
        })
        .collect();
    assert_eq!(vm.raw_buffer(b(3)).expect("b3"), &want[..]);
}
