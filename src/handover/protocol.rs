//! The hand-over's messages: one JSON object per `SOCK_SEQPACKET` message, descriptors attached where
//! a message says so.
//!
//! ```text
//! new -> old  Hello{version, pid, listeners}        what the new process will listen on
//! old -> new  Refused{reason}                       busy (another hand-over), version: the new exits
//!          or Listeners{pid, listeners} + one fd each   the listening sockets both processes want
//! new -> old  Accepting                             the new accepts on those and on what it bound
//! old         stops accepting (keeps its descriptors until Bye: resumes if the new goes away), asks
//!             its kTLS and spliced relays to release
//! old -> new  Connection{id, meta, state} + its descriptors, per released connection
//! new -> old  Adopted{id}                           before the new one touches it; without it the old
//!                                                   one resumes the connection itself
//! old -> new  Done{moved, stayed}
//! new -> old  Bye                                   the new owns the listeners and the socket path
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Bumped when a message changes: processes of different versions refuse each other (the new one
/// then exits, and the old keeps serving).
pub const VERSION: u32 = 1;

/// Which kind of listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Inbound,
    Outbound,
    /// `[metrics] listen`.
    Metrics,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Metrics => "metrics",
        }
    }
}

/// A listening socket as a config names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerId {
    pub kind: Kind,
    pub name: String,
    /// Hello: the new process's configured address. Listeners: the same (what it matched).
    pub listen: SocketAddr,
}

/// Why the old process will not hand over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// Another process (`pid`) is taking over, or has taken over, from it.
    Busy { pid: u32 },
    /// It speaks another version of this protocol.
    Version { version: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
// A message lives for one send or receive: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Message {
    Hello {
        version: u32,
        pid: u32,
        listeners: Vec<ListenerId>,
    },
    Refused {
        #[serde(flatten)]
        reason: Refusal,
    },
    Listeners {
        pid: u32,
        listeners: Vec<ListenerId>,
        /// What the old process's connections were verified under, per listener (by name).
        #[serde(default)]
        policies: Vec<ListenerPolicy>,
    },
    Accepting,
    /// One released connection; its descriptors attached in the order `state` documents.
    Connection {
        id: u64,
        meta: crate::listener::moves::Meta,
        state: crate::relay::RelayState,
    },
    /// Sent before the new process touches connection `id`: from then on it is the new one's.
    Adopted {
        id: u64,
    },
    Done {
        moved: u64,
        stayed: u64,
        /// The same per listener: the new process counts them
        /// (`ringseal_handover_connections_total`), since the old one's `/metrics` is handed over
        /// with its listeners and its own counters are never scraped again.
        #[serde(default)]
        listeners: Vec<ListenerMoves>,
    },
    Bye,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("hand-over messages serialise")
    }

    pub fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| std::io::Error::other(format!("not a hand-over message: {e}")))
    }

    /// The message's name, for errors ("expected Accepting, got Hello").
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Refused { .. } => "Refused",
            Self::Listeners { .. } => "Listeners",
            Self::Accepting => "Accepting",
            Self::Connection { .. } => "Connection",
            Self::Adopted { .. } => "Adopted",
            Self::Done { .. } => "Done",
            Self::Bye => "Bye",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest Connection message there can be: a kTLS relay holding a whole control record's
    /// plaintext (as JSON numbers, up to 4 bytes each), a long peer subject. It must fit one message.
    #[test]
    fn the_largest_connection_fits_one_message() {
        use crate::listener::moves::{Meta, TlsMeta};
        use crate::relay::{KtlsState, Path, PipeState, RelayState, StateCipher};
        let pipe = PipeState {
            held: usize::MAX,
            grow: false,
        };
        let m = Message::Connection {
            id: u64::MAX,
            meta: Meta {
                listener: "x".repeat(32),
                direction: "outbound".into(),
                peer: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                    .parse()
                    .unwrap(),
                local: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                    .parse()
                    .unwrap(),
                tls: Some(TlsMeta {
                    protocol: "TLSv1.3".into(),
                    suite: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".into(),
                    identity: Some("CN=".to_owned() + &"n".repeat(4096)),
                }),
                age_seconds: f64::MAX,
                from_peer: u64::MAX,
                to_peer: u64::MAX,
            },
            state: RelayState {
                path: Path::Ktls,
                from_peer: u64::MAX,
                to_peer: u64::MAX,
                up: pipe,
                down: pipe,
                ktls: Some(KtlsState {
                    pending: vec![255; crate::relay::MAX_PENDING],
                    client: true,
                    cipher: StateCipher::Chacha20Poly1305,
                    confidentiality_limit: u64::MAX,
                }),
            },
        };
        let len = m.encode().len();
        assert!(len <= super::super::wire::MAX_MESSAGE, "{len} bytes");
    }

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let m = Message::Refused {
            reason: Refusal::Busy { pid: 7 },
        };
        let bytes = m.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"Refused","reason":"busy","pid":7}"#
        );
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        let hello = Message::Hello {
            version: VERSION,
            pid: 1,
            listeners: vec![ListenerId {
                kind: Kind::Inbound,
                name: "internode".into(),
                listen: "127.0.0.1:7001".parse().unwrap(),
            }],
        };
        assert_eq!(Message::decode(&hello.encode()).unwrap(), hello);
        assert!(Message::decode(b"{\"type\":\"Steal\"}").is_err());
    }
}

/// How many connections of one listener of the old process moved and stayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerMoves {
    /// `inbound` or `outbound`.
    pub direction: String,
    pub listener: String,
    pub moved: u64,
    pub stayed: u64,
}

/// What the connections of one listener of the old process depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerPolicy {
    /// `inbound` or `outbound`.
    pub direction: String,
    pub listener: String,
    pub print: crate::tls::PolicyPrint,
}
