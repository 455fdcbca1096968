//! The cost report: predicted bytes and rounds (exact: the VM measures the same numbers) by
//! layer and by op kind, measured times where a run produced them, and network estimates.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use veil_isa::cost::{program_cost, Cost};
use veil_isa::lifetime::{dealer_footprint, footprint};
use veil_isa::Party;
use veil_isa::{Program, Tag};

/// A network model for time estimates.
#[derive(Copy, Clone, Debug, PartialEq, clap::ValueEnum)]
pub enum Net {
    /// 1 Gbit/s, 0.5 ms round trip.
    Lan,
    /// 100 Mbit/s, 40 ms round trip.
    Wan,
}

impl Net {
    /// The networks to estimate for: the one asked for, else both.
    pub fn chosen(n: Option<Net>) -> Vec<Net> {
        n.map(|n| vec![n]).unwrap_or_else(|| vec![Net::Lan, Net::Wan])
    }

    fn params(self) -> (f64, f64, &'static str) {
        match self {
            Net::Lan => (1e9 / 8.0, 0.5e-3, "LAN 1 Gbit/s, 0.5 ms RTT"),
            Net::Wan => (100e6 / 8.0, 40e-3, "WAN 100 Mbit/s, 40 ms RTT"),
        }
    }

    /// The network as the reports name it (`LAN 1 Gbit/s, 0.5 ms RTT`).
    pub fn label(self) -> &'static str {
        self.params().2
    }

    /// Seconds the network adds: the heavier direction's bytes at the bandwidth (links are
    /// full duplex and both parties send in every round) plus one round trip per round.
    pub fn seconds(self, c: &Cost) -> f64 {
        let (bw, rtt, _) = self.params();
        c.sent[0].max(c.sent[1]) as f64 / bw + c.rounds as f64 * rtt
    }
}

/// Human-readable bytes.
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

/// Measured times of a run, by tag (the client's view: local compute plus waits).
pub type Times = BTreeMap<Tag, Duration>;

fn table(rows: &[(String, Cost, Duration)], head: &str, timed: bool) -> String {
    let mut s = String::new();
    let _ = write!(s, "  {head:<16} {:>11} {:>7} {:>11}", "online", "rounds", "dealer");
    if timed {
        let _ = write!(s, " {:>9}", "time");
    }
    s.push('\n');
    for (k, c, t) in rows {
        let _ = write!(
            s,
            "  {k:<16} {:>11} {:>7} {:>11}",
            bytes(c.online()),
            c.rounds,
            bytes(c.dealer)
        );
        if timed {
            let _ = write!(s, " {:>7.0}ms", t.as_secs_f64() * 1e3);
        }
        s.push('\n');
    }
    s
}

/// Layers sorted as numbers (`layer2` before `layer10`), `model` first.
fn layer_key(l: &str) -> String {
    match l.strip_prefix("layer").and_then(|n| n.parse::<u32>().ok()) {
        Some(n) => format!("layer{n:04}"),
        None => format!("#{l}"),
    }
}

/// The full report for `p`, with measured times when given.
pub fn cost_report(p: &Program, times: Option<&Times>, nets: &[Net]) -> String {
    let pc = program_cost(p);
    let mut by_layer: BTreeMap<String, (String, Cost, Duration)> = BTreeMap::new();
    let mut by_op: BTreeMap<String, (Cost, Duration)> = BTreeMap::new();
    let mut tags: Vec<&Tag> = pc.by_tag.keys().collect();
    if let Some(t) = times {
        tags.extend(t.keys());
    }
    tags.sort();
    tags.dedup();
    for tag in tags {
        let c = pc.by_tag.get(tag).copied().unwrap_or_default();
        let t = times.and_then(|m| m.get(tag)).copied().unwrap_or_default();
        let e = by_layer.entry(layer_key(&tag.layer)).or_insert((
            tag.layer.clone(),
            Cost::default(),
            Duration::ZERO,
        ));
        e.1 += c;
        e.2 += t;
        let e = by_op.entry(tag.op.clone()).or_default();
        e.0 += c;
        e.1 += t;
    }
    let by_layer: Vec<(String, Cost, Duration)> = by_layer.into_values().collect();
    let by_op: Vec<(String, Cost, Duration)> =
        by_op.into_iter().map(|(k, (c, t))| (k, c, t)).collect();
    let timed = times.is_some();
    let mut s = String::new();
    if let Some(d) = &p.dynamic {
        let _ = writeln!(
            s,
            "token pruning: the cost at the full {} tokens; a run costs what the tokens kept at each \
             pruning point make it (veil run reports it per layer)",
            d.max_len
        );
    }
    let _ = writeln!(
        s,
        "per inference: online {} ({} client→server, {} server→client), {} rounds; dealer {}",
        bytes(pc.body.online()),
        bytes(pc.body.sent[0]),
        bytes(pc.body.sent[1]),
        pc.body.rounds,
        bytes(pc.body.dealer)
    );
    let _ = writeln!(
        s,
        "once per epoch and client (the masked weights, kept in a returning client's cache): online {}, {} rounds; dealer {}",
        bytes(pc.setup.online()),
        pc.setup.rounds,
        bytes(pc.setup.dealer)
    );
    if times.is_none() {
        // What each role will need (a measured run reports what it held instead).
        let (fc, fs) = (footprint(p, Party::Client), footprint(p, Party::Server));
        let (base, making) = dealer_footprint(p);
        let _ = writeln!(
            s,
            "memory (buffers, exact for the instruction order): client {} per session; server {} per session plus its weights {} (shared by its sessions); dealer {} per epoch plus {} per inference being made",
            bytes(fc.total()),
            bytes(fs.serving()),
            bytes(fs.weights),
            bytes(base),
            bytes(making)
        );
    }
    let _ = writeln!(s, "by layer:");
    s.push_str(&table(&by_layer, "layer", timed));
    let _ = writeln!(s, "by op kind:");
    s.push_str(&table(&by_op, "op", timed));
    for &n in nets {
        let (_, _, label) = n.params();
        let _ = writeln!(
            s,
            "network estimate ({label}): {:.2} s per inference on the wire{}",
            n.seconds(&pc.body),
            if timed { " plus the measured compute" } else { "" }
        );
    }
    s
}

/// Every value the program reveals, to whom.
pub fn reveals(p: &Program) -> String {
    let mut s = String::new();
    for o in &p.outputs {
        let _ = writeln!(
            s,
            "  reveal `{}` {:?} to the {} (the model's output)",
            o.name,
            o.shape,
            o.party.name()
        );
    }
    s
}
