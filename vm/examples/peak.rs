use veil_isa::lifetime::{self, local_writes};
use veil_isa::{Buf, Party, Program};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let p = Program::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    if let Some(b) = std::env::args().nth(2) {
        let b: u32 = b.parse().unwrap();
        for (i, ins) in p.body.iter().enumerate() {
            if ins.buffers().iter().any(|(x, _)| x.0 == b) {
                println!("#{i} {} {:?}", ins.disas(), p.tags.get(p.body_tags[i] as usize));
            }
        }
        return;
    }
    for me in [Party::Client, Party::Server] {
        let keep = lifetime::persistent(&p, me);
        let steps = lifetime::each_instruction(p.body.len());
        let steps: Vec<&[usize]> = steps.iter().map(|s| &s[..]).collect();
        let d = lifetime::deaths(&p, &p.body, &steps, p.body.len(), me, &keep);
        let mut held = vec![false; p.buffers.len()];
        let mut born = vec![0usize; p.buffers.len()];
        let (mut cur, mut peak, mut at) = (0u64, 0u64, 0usize);
        let bytes = |b: usize| 8 * p.buffers[b].kind.words(p.buffers[b].len) as u64;
        let mut snap: Vec<usize> = vec![];
        let mut w = Vec::new();
        for i in 0..p.body.len() {
            w.clear();
            local_writes(&p, &p.body[i], me, &mut w);
            for &b in &w {
                let k = b.0 as usize;
                if !keep[k] && !held[k] {
                    held[k] = true;
                    born[k] = i;
                    cur += bytes(k);
                }
            }
            if cur > peak {
                peak = cur;
                at = i;
                snap = (0..p.buffers.len()).filter(|&k| held[k]).collect();
            }
            for b in d.after(i) {
                let k = b.0 as usize;
                if held[k] {
                    held[k] = false;
                    cur -= bytes(k);
                }
            }
        }
        println!(
            "{me:?}: peak {:.1} MB at body #{at} ({}) tag {:?}",
            peak as f64 / 1e6,
            p.body[at].disas(),
            p.tags.get(p.body_tags[at] as usize)
        );
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for &k in &snap {
            let ins = &p.body[born[k]];
            let t = p
                .tags
                .get(p.body_tags[born[k]] as usize)
                .map(|t| format!("{}/{}", t.layer, t.op))
                .unwrap_or_default();
            *by.entry(format!("{} {} {}", t, ins.name(), p.buffers[k].kind)).or_default() +=
                bytes(k);
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1));
        for (k, b) in v.iter().take(12) {
            println!("   {:8.1} MB  {k}", *b as f64 / 1e6);
        }
        let mut big: Vec<usize> = snap.clone();
        big.sort_by_key(|&k| std::cmp::Reverse(bytes(k)));
        for &k in big.iter().take(8) {
            let last = (at..p.body.len()).find(|&j| d.after(j).iter().any(|b| b.0 as usize == k));
            println!(
                "   b{k} {} len {} born #{} {} dies #{:?}",
                p.buffers[k].kind,
                p.buffers[k].len,
                born[k],
                p.body[born[k]].disas(),
                last
            );
        }
        let _ = Buf(0);
    }
}
#[allow(dead_code)]
fn readers() {}
