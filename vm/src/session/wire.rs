//! The control messages of a deployment, besides the program's own rounds: a tag byte and
//! fixed fields, decoded strictly (a message of the wrong length or an unknown tag is refused
//! by name).
//!
//! - client ↔ server: [`Welcome`] (status and epoch), [`ClientMsg`] (whether it holds the
//!   epoch's masked weights; next query or goodbye), [`ServerMsg`] (a query's material ticket,
//!   wait, epoch rotated, refusal);
//! - server → dealer: [`ToDealer`] (the current epoch for its weights, a rotation, a ping, the
//!   material of one inference), dealer → server and client: [`FromDealer`].

use crate::prg::Seed;

/// A 16-byte identifier (epoch, ticket, server instance).
pub type Id = [u8; 16];

/// Largest control message.
pub const MAX_CONTROL: u64 = 4096;

/// Why a message could not be decoded.
pub fn bad(what: &str, msg: &[u8]) -> String {
    format!("malformed {what} ({} bytes, tag {:?})", msg.len(), msg.first())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(1024)]).into_owned()
}

fn id(b: &[u8]) -> Option<Id> {
    b.try_into().ok()
}

/// The server's first message of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Welcome {
    /// The session may start; the epoch whose masked weights it uses.
    Ok {
        /// The epoch.
        epoch: Id,
    },
    /// The server cannot take the session now (its reason; the client may retry).
    Refused(String),
}

impl Welcome {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Welcome::Ok { epoch } => [&[1u8][..], epoch].concat(),
            Welcome::Refused(why) => [&[2u8][..], why.as_bytes()].concat(),
        }
    }

    /// Parses the wire form.
    pub fn decode(m: &[u8]) -> Result<Welcome, String> {
        match m.split_first() {
            Some((1, e)) => {
                id(e).map(|epoch| Welcome::Ok { epoch }).ok_or_else(|| bad("welcome", m))
            }
            Some((2, why)) => Ok(Welcome::Refused(text(why))),
            _ => Err(bad("welcome", m)),
        }
    }
}

/// What a client says between inferences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// Before the first query: whether it already holds the epoch's masked weights.
    Setup {
        /// It does (the setup round is skipped).
        cached: bool,
    },
    /// It has an input: the next query.
    Next,
    /// No more queries: the session ends.
    Bye,
    /// Nothing (its side of a round the server speaks in).
    Empty,
}

impl ClientMsg {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientMsg::Setup { cached } => vec![1, *cached as u8],
            ClientMsg::Next => vec![2],
            ClientMsg::Bye => vec![3],
            ClientMsg::Empty => vec![],
        }
    }

    /// Parses the wire form.
    pub fn decode(m: &[u8]) -> Result<ClientMsg, String> {
        match m {
            [1, c @ (0 | 1)] => Ok(ClientMsg::Setup { cached: *c == 1 }),
            [2] => Ok(ClientMsg::Next),
            [3] => Ok(ClientMsg::Bye),
            [] => Ok(ClientMsg::Empty),
            _ => Err(bad("client message", m)),
        }
    }
}

/// The server's answer to a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMsg {
    /// Its side of a round the client speaks in.
    Empty,
    /// The query's material: fetch the client's seed from the dealer with `ticket`; `live`
    /// material is made during the run (a pruned program: the dealer learns each length).
    Entry {
        /// The ticket.
        ticket: Id,
        /// Made during the run.
        live: bool,
    },
    /// No material yet (the dealer is making it): ask again.
    Wait,
    /// The server moved to a new epoch: this session ends; a new one downloads the new
    /// masked weights.
    Rotated,
    /// The server cannot serve the query (its reason).
    Refused(String),
}

impl ServerMsg {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerMsg::Empty => vec![],
            ServerMsg::Entry { ticket, live } => [&[1u8, *live as u8][..], ticket].concat(),
            ServerMsg::Wait => vec![2],
            ServerMsg::Rotated => vec![3],
            ServerMsg::Refused(why) => [&[4u8][..], why.as_bytes()].concat(),
        }
    }

    /// Parses the wire form.
    pub fn decode(m: &[u8]) -> Result<ServerMsg, String> {
        match m {
            [] => Ok(ServerMsg::Empty),
            [1, l @ (0 | 1), t @ ..] => id(t)
                .map(|ticket| ServerMsg::Entry { ticket, live: *l == 1 })
                .ok_or_else(|| bad("server message", m)),
            [2] => Ok(ServerMsg::Wait),
            [3] => Ok(ServerMsg::Rotated),
            [4, why @ ..] => Ok(ServerMsg::Refused(text(why))),
            _ => Err(bad("server message", m)),
        }
    }
}

/// What the server asks the dealer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToDealer {
    /// The current epoch for weights with this digest (a new one when `rotate`).
    Epoch {
        /// SHA-256 of the server's weights (never sent to a client).
        digest: [u8; 32],
        /// Start a new epoch (new masks).
        rotate: bool,
    },
    /// Are you there?
    Ping,
    /// The server's material of one inference of `epoch` (on a material connection whose
    /// hello carries the ticket), made now (`live`: during the run) ...
    Material {
        /// The epoch it is made against.
        epoch: Id,
        /// Made during the run, with the client's lengths.
        live: bool,
        /// The server process asking (its tickets go when it does).
        instance: Id,
    },
}

impl ToDealer {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToDealer::Epoch { digest, rotate } => [&[1u8, *rotate as u8][..], digest].concat(),
            ToDealer::Ping => vec![2],
            ToDealer::Material { epoch, live, instance } => {
                [&[3u8, *live as u8][..], epoch, instance].concat()
            }
        }
    }

    /// Parses the wire form.
    pub fn decode(m: &[u8]) -> Result<ToDealer, String> {
        match m {
            [1, r @ (0 | 1), d @ ..] if d.len() == 32 => {
                Ok(ToDealer::Epoch { digest: d.try_into().expect("32 bytes"), rotate: *r == 1 })
            }
            [2] => Ok(ToDealer::Ping),
            [3, l @ (0 | 1), rest @ ..] if rest.len() == 32 => Ok(ToDealer::Material {
                epoch: rest[..16].try_into().expect("16 bytes"),
                live: *l == 1,
                instance: rest[16..].try_into().expect("16 bytes"),
            }),
            _ => Err(bad("request to the dealer", m)),
        }
    }
}

/// What the dealer answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromDealer {
    /// The epoch: its id and the server's seed for the setup (the weight masks).
    Epoch {
        /// Its id.
        id: Id,
        /// The server's setup seed.
        seed: Seed,
    },
    /// Yes.
    Pong,
    /// A party's seed for one inference (the server's is followed by its correction frames).
    Seed(Seed),
    /// The dealer refuses (its reason).
    Refused(String),
}

impl FromDealer {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FromDealer::Epoch { id, seed } => [&[1u8][..], id, seed].concat(),
            FromDealer::Pong => vec![2],
            FromDealer::Seed(s) => [&[3u8][..], s].concat(),
            FromDealer::Refused(why) => [&[4u8][..], why.as_bytes()].concat(),
        }
    }

    /// Parses the wire form.
    pub fn decode(m: &[u8]) -> Result<FromDealer, String> {
        match m {
            [1, rest @ ..] if rest.len() == 32 => Ok(FromDealer::Epoch {
                id: rest[..16].try_into().expect("16 bytes"),
                seed: rest[16..].try_into().expect("16 bytes"),
            }),
            [2] => Ok(FromDealer::Pong),
            [3, s @ ..] => id(s).map(FromDealer::Seed).ok_or_else(|| bad("dealer message", m)),
            [4, why @ ..] => Ok(FromDealer::Refused(text(why))),
            _ => Err(bad("dealer message", m)),
        }
    }
}

/// Runs every decoder on `data` (the fuzz target of the control messages): each must return.
pub fn decode_all(data: &[u8]) {
    let _ = Welcome::decode(data);
    let _ = ClientMsg::decode(data);
    let _ = ServerMsg::decode(data);
    let _ = ToDealer::decode(data);
    let _ = FromDealer::decode(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_junk_is_refused() {
        let w = [Welcome::Ok { epoch: [3; 16] }, Welcome::Refused("busy".into())];
        for m in w {
            assert_eq!(Welcome::decode(&m.encode()).unwrap(), m);
        }
        for m in
            [ClientMsg::Setup { cached: true }, ClientMsg::Next, ClientMsg::Bye, ClientMsg::Empty]
        {
            assert_eq!(ClientMsg::decode(&m.encode()).unwrap(), m);
        }
        let s = [
            ServerMsg::Empty,
            ServerMsg::Entry { ticket: [9; 16], live: true },
            ServerMsg::Wait,
            ServerMsg::Rotated,
            ServerMsg::Refused("no".into()),
        ];
        for m in s {
            assert_eq!(ServerMsg::decode(&m.encode()).unwrap(), m);
        }
        let t = [
            ToDealer::Epoch { digest: [1; 32], rotate: true },
            ToDealer::Ping,
            ToDealer::Material { epoch: [2; 16], live: false, instance: [4; 16] },
        ];
        for m in t {
            assert_eq!(ToDealer::decode(&m.encode()).unwrap(), m);
        }
        let f = [
            FromDealer::Epoch { id: [5; 16], seed: [6; 16] },
            FromDealer::Pong,
            FromDealer::Seed([7; 16]),
            FromDealer::Refused("gone".into()),
        ];
        for m in f {
            assert_eq!(FromDealer::decode(&m.encode()).unwrap(), m);
        }
        assert!(ClientMsg::decode(&[1, 2]).is_err());
        assert!(ServerMsg::decode(&[1, 0, 1]).is_err());
        assert!(ToDealer::decode(&[1, 0]).is_err());
        assert!(FromDealer::decode(&[3, 1]).is_err());
        assert!(Welcome::decode(&[9]).is_err());
    }
}
