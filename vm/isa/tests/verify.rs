//! The leakage analysis ([`veil_isa::verify`]): every protocol the builder expands passes it,
//! and each hand-made leak is refused with the instruction named.

use veil_isa::builder::{CompareParams, ProgramBuilder, THETA_BITS};
use veil_isa::{verify, Buf, ConstOrigin, Instr, Kind, Party, Program, VerifyError};

const F: u8 = 16;

/// Token pruning's protocols at length `n` (SSA, for a template): scores from both parties,
/// the keep comparison, the compaction of the rows of a secret, the count opened for `setlen`.
/// `leak_keep` opens the keep vector too (the mutant of issue 23, 9(d)).
fn pruned_at(n: u32, leak_keep: bool) -> Program {
    let row = 4;
    let mut b = ProgramBuilder::new(F);
    let x = b.input("x", Party::Client, &[n], F);
    let w = b.weight("w", Party::Server, false, &[n], F);
    let s = b.mul_priv(x, w, 1);
    let s = b.trunc(s, F);
    let total = b.sum(s, 1, n, 1);
    let keep = b.prune_keep(s, total, (1u64 << THETA_BITS) / 16, 1);
    if leak_keep {
        let d = b.buf(Kind::Public, n);
        b.emit(Instr::Open { d, a: keep, bits: 64, lo: 0 });
    }
    let c = b.compaction(keep);
    let rows = b.mul_imm(x, 1);
    let rows = b.broadcast(rows, &[n, 1], &[n, row]);
    let moved = b.compact_rows(&c, rows, row);
    b.set_len(c.count, 0);
    let first = b.view(moved, 0, &[1, row], &[row as i64, 1]);
    let sq = b.square(first, F);
    b.output("first", sq, Party::Client, &[row], 2 * F);
    b.finish_ssa()
}

/// The dynamic program of [`pruned_at`] (what `--prune` compiles).
fn pruned(leak_keep: bool) -> Program {
    let probes = [16, 15, 14, 8].map(|n| (n, pruned_at(n, leak_keep))).to_vec();
    veil_isa::template::from_probes(probes, 16).unwrap()
}

/// Every protocol of the builder in one program: products (plain, truncated, narrow), squares,
/// matrix products, products with a private weight, truncation, comparisons, ReLU, maxima,
/// argmax, one-hot of a secret index, top-k, bit-to-arithmetic and selection.
fn every_protocol() -> Program {
    let n = 64;
    let mut b = ProgramBuilder::new(F);
    let x = b.input("x", Party::Client, &[n], F);
    let w = b.weight("w", Party::Server, false, &[n], F);
    let m = b.weight("m", Party::Server, false, &[8, 8], F);
    let p = b.mul(x, 0, w, 0, 1);
    let sq = b.square(x, 0);
    let pt = b.trunc(p, F);
    let pp = b.mul(p, F, sq, F, 1);
    let nx = b.masked_open_w(pt, 0, 24);
    let ny = b.masked_open_w(x, 0, 24);
    let narrow = b.mul_masked(&nx, &ny, 1);
    let xw = b.mul_priv(x, w, 1);
    let xm = b.matmul_priv(x, m, 1, 8, 8, 8);
    let xx = b.matmul(x, pt, 1, 8, 8, 8);
    let r = b.relu(xw, F);
    let mx = b.max_rows(r, 8, 8);
    let mo = b.masked_open(pt, 0);
    let above = b.drelu(&mo, 3 << F);
    let above = b.b2a(above);
    let params = CompareParams { bits: 2 * F + 14, ignore: F, digit: 5 };
    let (_, idx) = b.argmax_rows(xm, 8, 8, params);
    let oh = b.one_hot_secret(idx, 8);
    let top = b.keep_top_k(xx, 8, 8, 2, params, 1 << 40);
    let outs = [pp, narrow, mx, above, oh, top];
    for (i, o) in outs.into_iter().enumerate() {
        let len = b.len(o);
        b.output(&format!("o{i}"), o, Party::Client, &[len], F);
    }
    b.finish()
}

#[test]
fn every_protocol_of_the_builder_verifies() {
    let r = verify(&every_protocol()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.outputs.len(), 6);
    assert!(r.counts.is_empty());
    // Two weights masked in the setup; one activation masked for both (one message).
    assert!(r.masked_openings > 20 && r.masked_sends == 3, "{r:?}");
    let text = r.to_string();
    assert!(text.starts_with("this program reveals:\n  to the client: output `o0` [64]"), "{text}");
}

#[test]
fn a_pruned_program_reveals_its_count_and_nothing_else() {
    let r = verify(&pruned(false)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.counts.len(), 1);
    assert_eq!(r.max_len, Some(16));
    let text = r.to_string();
    assert!(text.contains("the number of tokens kept at 1 pruning point"), "{text}");
    assert!(text.contains("each at most 16"), "{text}");
}

#[test]
fn opening_the_keep_vector_is_refused() {
    let e = verify(&pruned(true)).unwrap_err();
    let VerifyError::Leak { section, disas, why, .. } = &e else { panic!("{e}") };
    assert_eq!(*section, "body");
    assert!(disas.starts_with("open d="), "{e}");
    assert!(why.contains("only a kept-token count") && why.contains("one element"), "{e}");
}

/// `x` from the client, `w` from the server, `f` run on a builder holding them; the result is
/// finished after outputting `out` (if any).
fn hand_made(f: impl FnOnce(&mut ProgramBuilder, Buf, Buf) -> Option<Buf>) -> Program {
    let mut b = ProgramBuilder::new(F);
    let x = b.input("x", Party::Client, &[8], F);
    let w = b.weight("w", Party::Server, false, &[8], F);
    if let Some(o) = f(&mut b, x, w) {
        let n = b.len(o);
        b.output("y", o, Party::Client, &[n], F);
    }
    b.finish()
}

/// The refusal of `p`: section, disassembly and reason.
fn leak(p: &Program) -> (&'static str, String, String) {
    match verify(p) {
        Err(VerifyError::Leak { section, disas, why, index }) => {
            let shown = verify(p).unwrap_err().to_string();
            assert!(shown.contains(&format!("{section} #{index} `{disas}`")), "{shown}");
            (section, disas, why)
        }
        other => panic!("expected a leak, got {other:?}"),
    }
}

#[test]
fn sending_the_client_input_is_refused() {
    let p = hand_made(|b, x, _| {
        let d = b.buf(Kind::Private(Party::Server), 8);
        b.emit(Instr::Send { d, a: x, from: Party::Client });
        None
    });
    let (section, disas, why) = leak(&p);
    assert_eq!(section, "body");
    assert!(disas.starts_with("send ") && disas.contains("from=client"), "{disas}");
    assert!(why.contains("the client sends") && why.contains("not masked"), "{why}");
}

#[test]
fn sending_a_value_computed_from_the_input_without_a_fresh_mask_is_refused() {
    let p = hand_made(|b, x, _| {
        let y = b.mul_imm(x, 3);
        let z = b.add_imm(y, 12345);
        let d = b.buf(Kind::Private(Party::Server), 8);
        b.emit(Instr::Send { d, a: z, from: Party::Client });
        None
    });
    assert!(leak(&p).2.contains("not masked by fresh dealer randomness"));
    // Masked by the receiver's own `dpriv`: the sender's array of it is zero.
    let p = hand_made(|b, x, _| {
        let a = b.buf(Kind::Private(Party::Server), 8);
        b.emit(Instr::DPriv { d: a });
        let e = b.sub(x, a);
        let d = b.buf(Kind::Private(Party::Server), 8);
        b.emit(Instr::Send { d, a: e, from: Party::Client });
        None
    });
    assert!(leak(&p).2.contains("which only the server does not know"), "{}", leak(&p).2);
}

#[test]
fn opening_the_input_or_opening_it_masked_by_one_party_is_refused() {
    let p = hand_made(|b, x, _| {
        let d = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d, a: x, bits: 64, lo: 0 });
        None
    });
    let (_, disas, why) = leak(&p);
    assert!(disas.starts_with("open "), "{disas}");
    assert!(why.contains("only a kept-token count"), "{why}");
    // A `dpriv` of the client hides the client's share only.
    let p = hand_made(|b, x, w| {
        let s = b.add(x, w);
        let a = b.buf(Kind::Private(Party::Client), 8);
        b.emit(Instr::DPriv { d: a });
        let y = b.add(s, a);
        let d = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d, a: y, bits: 64, lo: 0 });
        None
    });
    assert!(leak(&p).2.contains("which only the client does not know"), "{}", leak(&p).2);
}

/// Opens `x + r` and `w + r` with one mask `r`, in one round or two.
fn mask_reused(two_rounds: bool) -> Program {
    hand_made(|b, x, w| {
        let r = b.buf(Kind::Share, 8);
        b.emit(Instr::DMask { d: r });
        let y1 = b.add(x, r);
        let c1 = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c1, a: y1, bits: 64, lo: 0 });
        // A second operand that depends on the first opening puts it in a later round.
        let w = if two_rounds { b.add(w, c1) } else { w };
        let y2 = b.add(w, r);
        let c2 = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c2, a: y2, bits: 64, lo: 0 });
        let s = b.sub(c2, r);
        Some(s)
    })
}

#[test]
fn one_mask_for_two_openings_is_refused() {
    for two_rounds in [false, true] {
        let p = mask_reused(two_rounds);
        let (_, disas, why) = leak(&p);
        assert!(disas.starts_with("open "), "{disas}");
        assert!(why.contains("which already masked the message at body #"), "{why}");
        assert!(why.contains("dmask"), "{why}");
    }
}

#[test]
fn a_mask_mixed_into_an_earlier_message_is_refused() {
    // y1 = x + r1 + r2 masks by r1 and contains r2; y2 = w + r2 then opens r2 a second time.
    let p = hand_made(|b, x, w| {
        let r1 = b.buf(Kind::Share, 8);
        b.emit(Instr::DMask { d: r1 });
        let r2 = b.buf(Kind::Share, 8);
        b.emit(Instr::DMask { d: r2 });
        let y1 = b.add(x, r1);
        let y1 = b.add(y1, r2);
        let c1 = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c1, a: y1, bits: 64, lo: 0 });
        let w = b.add(w, c1);
        let y2 = b.add(w, r2);
        let c2 = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c2, a: y2, bits: 64, lo: 0 });
        None
    });
    assert!(leak(&p).2.contains("appeared in an earlier message"), "{}", leak(&p).2);
    // The same through the dealer: a value the dealer derives from r2 (its top bits).
    let p = hand_made(|b, x, w| {
        let r1 = b.buf(Kind::Share, 8);
        b.emit(Instr::DMask { d: r1 });
        let r2 = b.buf(Kind::Share, 8);
        b.emit(Instr::DMask { d: r2 });
        let (hi, msb) = (b.buf(Kind::Share, 8), b.buf(Kind::Share, 8));
        b.emit(Instr::DTrunc { hi, msb, a: r2, t: 16, w: 64 });
        let y1 = b.add(x, hi);
        let y1 = b.add(y1, r1);
        let c1 = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c1, a: y1, bits: 64, lo: 0 });
        let w = b.add(w, c1);
        let y2 = b.add(w, r2);
        let c2 = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c2, a: y2, bits: 64, lo: 0 });
        Some(msb)
    });
    assert!(leak(&p).2.contains("appeared in an earlier message"), "{}", leak(&p).2);
}

#[test]
fn a_mask_broadcast_over_several_elements_is_refused() {
    // x + r with one mask element per two elements of x opens x[2i] - x[2i+1].
    let p = hand_made(|b, x, _| {
        let r = b.buf(Kind::Share, 4);
        b.emit(Instr::DMask { d: r });
        let y = b.add_b(x, r, 1);
        let c = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c, a: y, bits: 64, lo: 0 });
        None
    });
    assert!(leak(&p).2.contains("not masked"), "{}", leak(&p).2);
}

#[test]
fn a_setup_mask_masks_no_opening_of_the_body() {
    let p = hand_made(|b, x, _| {
        let r = b.in_setup(|b| {
            let r = b.buf(Kind::Share, 8);
            b.emit(Instr::DMask { d: r });
            r
        });
        let y = b.add(x, r);
        let c = b.buf(Kind::Public, 8);
        b.emit(Instr::Open { d: c, a: y, bits: 64, lo: 0 });
        None
    });
    assert!(leak(&p).2.contains("drawn once in the setup"), "{}", leak(&p).2);
}

#[test]
fn overwriting_the_source_of_a_pending_open_is_refused() {
    // The VM packs an open's source when it meets the `open` and adds its own share again at
    // the exchange: the source must not change in between. Built by hand (no scheduler).
    let mut p = hand_made(|_, _, _| None);
    let n = p.buffers.len() as u32;
    p.buffers.extend([
        veil_isa::BufDecl { kind: Kind::Share, len: 8 },
        veil_isa::BufDecl { kind: Kind::Share, len: 8 },
        veil_isa::BufDecl { kind: Kind::Public, len: 8 },
    ]);
    let (r, y, c) = (Buf(n), Buf(n + 1), Buf(n + 2));
    let x = p.inputs[0].buf;
    p.body = vec![
        Instr::DMask { d: r },
        Instr::Add { d: y, a: x, b: r, inner: 1 },
        Instr::Open { d: c, a: y, bits: 64, lo: 0 },
        Instr::Copy {
            d: y,
            d_off: 0,
            a: x,
            a_off: 0,
            shape: veil_isa::Dims(vec![8]),
            d_strides: veil_isa::Strides(vec![1]),
            a_strides: veil_isa::Strides(vec![1]),
        },
        Instr::Exchange {},
    ];
    p.body_tags = vec![0; p.body.len()];
    let (_, disas, why) = leak(&p);
    assert!(disas.starts_with("copy "), "{disas}");
    assert!(why.contains("awaits its exchange"), "{why}");
}

#[test]
fn reveals_go_to_declared_outputs_of_the_client_only() {
    // To the server.
    let p = hand_made(|b, x, w| {
        let s = b.add(x, w);
        b.output("y", s, Party::Server, &[8], F);
        None
    });
    let e = verify(&p).unwrap_err();
    assert!(matches!(e, VerifyError::Declaration(_)), "{e}");
    assert!(e.to_string().contains("declared for the server"), "{e}");
    let mut p = p;
    p.outputs.clear();
    let (_, disas, why) = leak(&p);
    assert!(disas.contains("to=server") && why.contains("only to the client"), "{why}");
    // To the client, but not a declared output.
    let p = hand_made(|b, x, w| {
        let s = b.add(x, w);
        let d = b.buf(Kind::Private(Party::Client), 8);
        b.emit(Instr::Reveal { d, a: s, to: Party::Client });
        None
    });
    assert!(leak(&p).2.contains("not the buffer of a declared output"), "{}", leak(&p).2);
}

#[test]
fn a_constant_from_a_private_weight_is_refused() {
    let mut p = hand_made(|b, x, _| {
        let c = b.constant_from(
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            ConstOrigin::PrivateWeight { party: Party::Server, name: "layer.0.q".into() },
        );
        Some(b.add(x, c))
    });
    let e = verify(&p).unwrap_err();
    assert!(e.to_string().contains("the server's private weight `layer.0.q`"), "{e}");
    p.const_origins[0] = ConstOrigin::PublicWeights(vec!["layer.0.q".into()]);
    let r = verify(&p).unwrap();
    assert_eq!(r.public_weights, vec!["layer.0.q".to_string()]);
    assert!(r.to_string().contains("public weight in the clear: layer.0.q"), "{r}");
    // Origins survive the file.
    let q = Program::from_bytes(&p.to_bytes()).unwrap();
    assert_eq!(q.const_origins, p.const_origins);
}

#[test]
fn a_count_must_feed_setlen_and_nothing_else() {
    let mut p = pruned(false);
    let (open, setlen) = {
        let r = verify(&p).unwrap();
        (r.counts[0].open, r.counts[0].setlen)
    };
    let Instr::Open { d, .. } = p.body[open] else { panic!() };
    // Read by something else after the exchange, before the setlen.
    let spare = Buf(p.buffers.len() as u32);
    p.buffers.push(veil_isa::BufDecl { kind: Kind::Public, len: 1 });
    p.body.insert(setlen, Instr::AddImm { d: spare, a: d, imm: 1 });
    p.body_tags.insert(setlen, 0);
    p.dynamic = Some(veil_isa::Dynamic {
        fields: p
            .dynamic
            .take()
            .unwrap()
            .fields
            .into_iter()
            .map(|mut f| {
                f.instr += (f.instr >= setlen as u32) as u32;
                f
            })
            .collect(),
        ..pruned(false).dynamic.unwrap()
    });
    assert!(leak(&p).2.contains("its only use is the next `setlen`"), "{}", leak(&p).2);
}

/// `VEIL_VERIFY_FILE=x.vbc cargo test --release -p veil-isa --test verify -- --ignored
/// --nocapture`: how long the verification of a compiled program takes.
#[test]
#[ignore]
fn time_of_a_program_file() {
    let path = std::env::var("VEIL_VERIFY_FILE").expect("VEIL_VERIFY_FILE names a .vbc");
    let p = Program::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let t = std::time::Instant::now();
    veil_isa::validate(&p).unwrap();
    let tv = t.elapsed();
    let r = verify(&p).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{} setup + {} body instructions, {} buffers: validate {tv:?}, verify (validation \
         included) {:?}\n{r}",
        p.setup.len(),
        p.body.len(),
        p.buffers.len(),
        t.elapsed() - tv
    );
}

/// Hostile programs: instructions with a byte of their encoding flipped, dropped or
/// duplicated. The analysis (after validation) returns an answer, never panics.
#[test]
fn damaged_programs_get_an_answer_never_a_panic() {
    use veil_isa::operand::{Reader, Writer};
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut accepted, mut refused) = (0, 0);
    for base in [every_protocol(), pruned(false)] {
        for _ in 0..1500 {
            let mut p = base.clone();
            for _ in 0..1 + next() % 3 {
                let k = (next() % p.body.len() as u64) as usize;
                match next() % 4 {
                    0 => {
                        p.body.remove(k);
                        p.body_tags.remove(k);
                    }
                    1 => {
                        let i = p.body[k].clone();
                        p.body.insert(k, i);
                        p.body_tags.insert(k, 0);
                    }
                    _ => {
                        let mut w = Writer::default();
                        p.body[k].encode(&mut w);
                        let at = (next() % w.bytes.len() as u64) as usize;
                        w.bytes[at] ^= 1 << (next() % 8);
                        if let Ok(i) = Instr::decode(&mut Reader::new(&w.bytes)) {
                            p.body[k] = i;
                        }
                    }
                }
            }
            match verify(&p) {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
    }
    eprintln!("{accepted} damaged programs accepted, {refused} refused");
    assert!(refused > accepted, "most damage is caught by validation or the analysis");
}
