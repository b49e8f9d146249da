//! The hand-over to the kernel: everything that rules kTLS out is found before the keys leave
//! rustls (the connection then stays on the user-space path); after that the connection stays on
//! the kTLS path, and a failure aborts it with the bytes already received delivered.

use std::io::{self, BufRead};
use std::os::fd::AsFd;
use std::time::Duration;

use rustls::{CipherSuite, ProtocolVersion, SupportedCipherSuite};
use tokio::net::TcpStream;

use super::record_limit::TxLimit;
use super::support::{KtlsUnavailable, cipher_name, cipher_of, support};
use crate::relay::handshake::flush;
use crate::relay::poll_loop::Side;
use crate::relay::splice::Pump;
use crate::relay::{Close, Offload};
use crate::sys::{self, CryptoInfo, KtlsCipher, KtlsDirection};

/// How long flushing what rustls queued before the hand-over may take.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

// Built once per connection and unpacked at once: boxing the connection would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(in crate::relay) enum Engage {
    Engaged(Engaged),
    /// kTLS is not possible or not allowed; nothing was touched, the user-space path can take over.
    Declined {
        tcp: TcpStream,
        conn: rustls::Connection,
        plain: TcpStream,
        why: DeclineReason,
    },
}

/// A connection handed to the kernel (or that failed during the hand-over, with the bytes received so
/// far still to be delivered).
pub(in crate::relay) struct Engaged {
    pub(super) tls: TcpStream,
    pub(super) plain: TcpStream,
    pub(super) up: Pump,
    pub(super) down: Pump,
    /// Plaintext rustls had decrypted before the hand-over: written to the backend first.
    pub(super) pending: Vec<u8>,
    /// The TX key is in the kernel; `None`: nothing more can be sent to the peer.
    pub(super) tx: Option<TxLimit>,
    /// The RX key is in the kernel and the peer's stream has not ended.
    pub(super) rx_open: bool,
    /// The first notable event of the hand-over.
    pub(super) close: Option<Close>,
    /// Client side (a NewSessionTicket is legitimate).
    pub(super) client: bool,
}

/// Why a connection stays on the user-space path.
#[derive(Debug, thiserror::Error)]
pub(in crate::relay) enum DeclineReason {
    #[error("offload = \"off\"")]
    OffloadOff,
    #[error("kTLS unavailable: {0}")]
    Unavailable(&'static KtlsUnavailable),
    #[error("the handshake is not complete")]
    HandshakeIncomplete,
    #[error("{0:?} cannot be offloaded")]
    Version(ProtocolVersion),
    #[error("the kernel cannot offload {0:?}")]
    Cipher(CipherSuite),
    #[error("cannot create pipes: {0}")]
    Pipes(io::Error),
    #[error("setsockopt TCP_ULP \"tls\": {0}")]
    Ulp(io::Error),
}

/// Hands the connection to the kernel if `offload` allows and the kernel can take its cipher.
pub(in crate::relay) async fn engage(
    tls: TcpStream,
    mut conn: rustls::Connection,
    plain: TcpStream,
    offload: Offload,
) -> Engage {
    let offloadable = match offloadable(&conn, offload) {
        Ok(o) => o,
        Err(why) => return declined(tls, conn, plain, why),
    };
    let (up, down) = match Pump::new().and_then(|up| Ok((up, Pump::new()?))) {
        Ok(p) => p,
        Err(e) => return declined(tls, conn, plain, DeclineReason::Pipes(e)),
    };
    if let Err(e) = sys::set_tls_ulp(tls.as_fd()) {
        return declined(tls, conn, plain, DeclineReason::Ulp(e));
    }
    // Committed: with the tls ULP but no key yet the socket still works as plain TCP, but from here
    // on the hand-over proceeds, and a failure ends the connection.
    let client = matches!(conn, rustls::Connection::Client(_));
    let mut pending = Vec::new();
    // Plaintext rustls decrypted: none, as `super::handshake` stops at the handshake's last record
    // (which also leaves the socket at a record boundary); taken anyway, should that ever change.
    take_plaintext(&mut conn, &mut pending);
    let installed = hand_over(&tls, conn, &offloadable, pending.len()).await;
    Engage::Engaged(Engaged {
        tls,
        plain,
        up,
        down,
        pending,
        tx: installed.tx,
        rx_open: installed.rx_open,
        close: installed.close,
        client,
    })
}

fn declined(
    tcp: TcpStream,
    conn: rustls::Connection,
    plain: TcpStream,
    why: DeclineReason,
) -> Engage {
    Engage::Declined {
        tcp,
        conn,
        plain,
        why,
    }
}

/// What the kernel needs to take a connection over.
struct Offloadable {
    cipher: KtlsCipher,
    tls13: bool,
    version: ProtocolVersion,
    confidentiality_limit: u64,
}

/// Whether `offload` allows kTLS for `conn` and the kernel can take its cipher; decided before the
/// keys leave rustls, so that a connection declined here stays on the user-space path.
fn offloadable(conn: &rustls::Connection, offload: Offload) -> Result<Offloadable, DeclineReason> {
    if offload == Offload::Off {
        return Err(DeclineReason::OffloadOff);
    }
    let ciphers = match &support().result {
        Ok(c) => *c,
        Err(why) => return Err(DeclineReason::Unavailable(why)),
    };
    let (Some(suite), Some(version)) = (conn.negotiated_cipher_suite(), conn.protocol_version())
    else {
        return Err(DeclineReason::HandshakeIncomplete);
    };
    let tls13 = match version {
        ProtocolVersion::TLSv1_3 => true,
        ProtocolVersion::TLSv1_2 => false,
        other => return Err(DeclineReason::Version(other)),
    };
    let Some(cipher) = cipher_of(suite.suite()).filter(|c| ciphers.supports(tls13, *c)) else {
        return Err(DeclineReason::Cipher(suite.suite()));
    };
    let confidentiality_limit = match suite {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    Ok(Offloadable {
        cipher,
        tls13,
        version,
        confidentiality_limit,
    })
}

/// What the hand-over left in the kernel, and its failure if any.
struct Installed {
    /// The TX key is in the kernel.
    tx: Option<TxLimit>,
    /// The RX key is in the kernel.
    rx_open: bool,
    close: Option<Close>,
}

/// Flushes what rustls queued (the client's last flight is flushed by the handshake already), then
/// moves the keys out of rustls and into the kernel.
async fn hand_over(
    tcp: &TcpStream,
    mut conn: rustls::Connection,
    o: &Offloadable,
    already_decrypted: usize,
) -> Installed {
    let flushed = tokio::time::timeout(FLUSH_DEADLINE, flush(tcp, &mut conn)).await;
    if let Ok(Err(e)) | Err(e) = flushed.map_err(|_| io::Error::from(io::ErrorKind::TimedOut)) {
        return Installed {
            tx: None,
            rx_open: false,
            close: Some(Side::Peer.close_for(&e)),
        };
    }
    let secrets = match conn.dangerous_extract_secrets() {
        Ok(secrets) => secrets,
        Err(e) => {
            return Installed {
                tx: None,
                rx_open: false,
                close: Some(Close::Io(format!(
                    "kTLS hand-over: extracting the keys: {e}"
                ))),
            };
        }
    };
    let (tx_seq, tx_secrets) = secrets.tx;
    let (rx_seq, rx_secrets) = secrets.rx;
    let mut installed = Installed {
        tx: None,
        rx_open: true,
        close: None,
    };
    match set_key(tcp, KtlsDirection::Tx, o, tx_seq, &tx_secrets) {
        Ok(()) => installed.tx = Some(TxLimit::new(o.cipher, tx_seq, o.confidentiality_limit)),
        Err(e) => installed.close = Some(Close::Io(format!("kTLS hand-over: TLS_TX: {e}"))),
    }
    if installed.close.is_none()
        && let Err(e) = set_key(tcp, KtlsDirection::Rx, o, rx_seq, &rx_secrets)
    {
        installed.close = Some(Close::Io(format!("kTLS hand-over: TLS_RX: {e}")));
    }
    if installed.close.is_some() {
        installed.rx_open = false;
    }
    tracing::trace!(
        "kTLS engaged: {:?} {}, tx seq {tx_seq}, rx seq {rx_seq}, {} bytes already decrypted",
        o.version,
        cipher_name(o.cipher),
        already_decrypted
    );
    installed
}

fn take_plaintext(conn: &mut rustls::Connection, pending: &mut Vec<u8>) {
    let mut reader = conn.reader();
    while let Ok(chunk) = reader.fill_buf() {
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        pending.extend_from_slice(chunk);
        reader.consume(n);
    }
}

fn set_key(
    tcp: &TcpStream,
    dir: KtlsDirection,
    o: &Offloadable,
    seq: u64,
    secrets: &rustls::ConnectionTrafficSecrets,
) -> io::Result<()> {
    use rustls::ConnectionTrafficSecrets as S;
    let (key, iv) = match secrets {
        S::Aes128Gcm { key, iv } | S::Aes256Gcm { key, iv } | S::Chacha20Poly1305 { key, iv } => {
            (key.as_ref(), iv.as_ref())
        }
        _ => return Err(io::Error::other("rustls extracted an unknown cipher")),
    };
    let info = CryptoInfo::new(o.cipher, o.tls13, key, iv, seq)
        .ok_or_else(|| io::Error::other("key or IV length does not match the cipher"))?;
    sys::set_crypto(tcp.as_fd(), dir, &info)
}
