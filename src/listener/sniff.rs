//! What did the peer send? Looking at the first bytes before handing the connection to rustls lets the
//! log say "a Cassandra node is sending plaintext to the TLS port" instead of "invalid content type".

use std::fmt;

/// The first bytes of a connection, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake record (content type 22).
    Tls,
    /// An SSL 2.0-compatible ClientHello (only ancient clients send one).
    Ssl2Hello,
    /// Cassandra's internode protocol magic 0xCA552DFA (every version starts its handshake with it).
    CassandraInternode,
    /// A CQL native-protocol request frame: a driver without TLS (or pointed at the internode port).
    Cql,
    Http,
    Other,
}

/// Classifies at least one byte of a connection's start.
pub fn sniff(first: &[u8]) -> Sniffed {
    const HTTP: [&[u8]; 9] = [
        b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ",
    ];
    match first {
        [0x16, ..] => Sniffed::Tls,
        [0xCA, 0x55, 0x2D, 0xFA, ..] => Sniffed::CassandraInternode,
        [b, _, 0x01, 0x03, ..] if b & 0x80 != 0 => Sniffed::Ssl2Hello,
        // Request frames of CQL v3..v5: version byte, flags, stream id, opcode STARTUP (0x01) or OPTIONS (0x05).
        [0x03..=0x05, _, _, _, 0x01 | 0x05, ..] => Sniffed::Cql,
        b if HTTP.iter().any(|m| b.starts_with(m)) => Sniffed::Http,
        _ => Sniffed::Other,
    }
}

impl fmt::Display for Sniffed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls => "a TLS handshake",
            Self::Ssl2Hello => "an SSLv2-style hello (SSLv2/SSLv3 are not supported; use TLS 1.2 or 1.3)",
            Self::CassandraInternode => {
                "plaintext Cassandra internode traffic (is this peer missing its sidecar, or dialing the \
                 TLS port without encryption?)"
            }
            Self::Cql => {
                "the opening frame of a plaintext CQL client (a driver without TLS: enable TLS in it, \
                 e.g. ssl_context in the Python driver or withSslContext in the Java driver; on the \
                 internode port, point it at the CQL port instead)"
            }
            Self::Http => "an HTTP request",
            Self::Other => "bytes that are not a TLS handshake",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_first_bytes() {
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniffed::Tls);
        assert_eq!(sniff(&[0x16]), Sniffed::Tls);
        assert_eq!(
            sniff(&[0xCA, 0x55, 0x2D, 0xFA, 0, 0, 0, 0]),
            Sniffed::CassandraInternode
        );
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(
            sniff(&[0x04, 0x00, 0x00, 0x01, 0x01, 0, 0, 0]),
            Sniffed::Cql
        );
        // OPTIONS from the Python driver's first attempt (v5) and from a v3 driver.
        assert_eq!(
            sniff(&[0x05, 0x00, 0x00, 0x00, 0x05, 0, 0, 0]),
            Sniffed::Cql
        );
        assert_eq!(
            sniff(&[0x03, 0x00, 0x00, 0x00, 0x05, 0, 0, 0]),
            Sniffed::Cql
        );
        // A response frame (0x84) or an opcode no client sends first (QUERY) is not a client's opening.
        assert_eq!(
            sniff(&[0x84, 0x00, 0x00, 0x00, 0x06, 0, 0, 0]),
            Sniffed::Other
        );
        assert_eq!(
            sniff(&[0x04, 0x00, 0x00, 0x00, 0x07, 0, 0, 0]),
            Sniffed::Other
        );
        assert_eq!(sniff(&[0x80, 0x2e, 0x01, 0x03, 0x01]), Sniffed::Ssl2Hello);
        assert_eq!(sniff(b"hello"), Sniffed::Other);
        assert_eq!(sniff(&[0xCA]), Sniffed::Other);
    }
}
