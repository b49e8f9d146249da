//! What a control record means. `splice` stops at a record that is not application data; the relay
//! reads it with `recvmsg` and [`interpret`] says what it asks for: close_notify ends the peer's
//! direction cleanly; other alerts abort the connection (user_canceled is ignored); a
//! NewSessionTicket is ignored; a KeyUpdate aborts the connection (the kernel cannot follow it); a TLS
//! 1.2 HelloRequest is declined with a no_renegotiation warning, as rustls does; anything else is a
//! protocol error answered with an unexpected_message alert, then the abort.

use crate::relay::Close;
use crate::sys;

/// The largest TLS record payload a control record can carry (2^14), plus room for TLS 1.3 padding.
pub(super) const CONTROL_BUF: usize = 16 * 1024 + 256;

pub(super) const ALERT_WARNING: u8 = 1;
pub(super) const ALERT_FATAL: u8 = 2;
pub(super) const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_USER_CANCELED: u8 = 90;
pub(super) const ALERT_NO_RENEGOTIATION: u8 = 100;

const HS_HELLO_REQUEST: u8 = 0;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// Where a handshake message that spans records stands.
#[derive(Default)]
pub(super) struct HandshakeReader {
    header: [u8; 4],
    header_len: usize,
    /// Body bytes of the current message still to skip.
    skip: usize,
}

impl HandshakeReader {
    /// No handshake message is half read (a release must not split one).
    pub(super) fn idle(&self) -> bool {
        self.header_len == 0 && self.skip == 0
    }

    /// The type of the next message whose header completes in `data` (its body is skipped, also
    /// across records); `None` when `data` is used up.
    pub(super) fn next_message(&mut self, data: &mut &[u8]) -> Option<u8> {
        while !data.is_empty() {
            if self.skip > 0 {
                let k = self.skip.min(data.len());
                self.skip -= k;
                *data = &data[k..];
                continue;
            }
            let k = (4 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + k].copy_from_slice(&data[..k]);
            self.header_len += k;
            *data = &data[k..];
            if self.header_len == 4 {
                self.header_len = 0;
                let [typ, a, b, c] = self.header;
                self.skip = u32::from_be_bytes([0, a, b, c]) as usize;
                return Some(typ);
            }
        }
        None
    }
}

/// What a control record asks of the relay.
pub(super) enum Control {
    /// Nothing: keep relaying.
    Continue,
    /// Application data read along: deliver it.
    Data(usize),
    /// The peer's direction ended cleanly (close_notify).
    Closed,
    /// The peer's direction cannot go on; `Some(alert)`: tell the peer (fatal alert description).
    End(Close, Option<u8>),
}

/// A control record's meaning, and whether a HelloRequest in it is to be declined (a
/// no_renegotiation warning, sent before anything `control` asks for).
pub(super) struct Interpreted {
    pub(super) control: Control,
    pub(super) decline_renegotiation: bool,
}

/// What the record of `record_type` whose payload is `payload` asks of the relay; `client`: we are
/// the client (a NewSessionTicket or HelloRequest is legitimate).
pub(super) fn interpret(
    record_type: u8,
    payload: &[u8],
    handshake: &mut HandshakeReader,
    client: bool,
) -> Interpreted {
    let control = match record_type {
        sys::RECORD_APPLICATION_DATA if payload.is_empty() => {
            Control::End(Close::PeerNoCloseNotify, None)
        }
        sys::RECORD_APPLICATION_DATA => Control::Data(payload.len()),
        sys::RECORD_ALERT => alert(payload),
        sys::RECORD_HANDSHAKE => return handshake_messages(payload, handshake, client),
        other => Control::End(
            Close::PeerTlsError(format!(
                "unexpected record type {other} after the handshake"
            )),
            Some(ALERT_UNEXPECTED_MESSAGE),
        ),
    };
    Interpreted {
        control,
        decline_renegotiation: false,
    }
}

fn alert(payload: &[u8]) -> Control {
    match *payload {
        [_, ALERT_CLOSE_NOTIFY] => {
            tracing::trace!("kTLS: close_notify from the peer");
            Control::Closed
        }
        [ALERT_WARNING, ALERT_USER_CANCELED] => Control::Continue,
        [_, description] => Control::End(
            Close::PeerTlsError(format!("the peer sent alert {description}")),
            None,
        ),
        _ => Control::End(
            Close::PeerTlsError("malformed alert record".into()),
            Some(ALERT_DECODE_ERROR),
        ),
    }
}

/// Post-handshake messages in `payload` (a message may continue in the next record).
fn handshake_messages(
    mut payload: &[u8],
    handshake: &mut HandshakeReader,
    client: bool,
) -> Interpreted {
    let mut decline_renegotiation = false;
    let mut control = Control::Continue;
    while let Some(typ) = handshake.next_message(&mut payload) {
        match typ {
            HS_NEW_SESSION_TICKET if client => {
                tracing::trace!("kTLS: NewSessionTicket from the peer ignored (resumption is off)");
            }
            HS_HELLO_REQUEST if client => {
                tracing::trace!("kTLS: HelloRequest declined (no renegotiation)");
                decline_renegotiation = true;
            }
            HS_KEY_UPDATE => {
                tracing::trace!(
                    "kTLS: KeyUpdate from the peer; the kernel cannot follow it, aborting"
                );
                control = Control::End(Close::PeerKeyUpdate, None);
                break;
            }
            other => {
                control = Control::End(
                    Close::PeerTlsError(format!(
                        "unexpected handshake message {other} after the handshake"
                    )),
                    Some(ALERT_UNEXPECTED_MESSAGE),
                );
                break;
            }
        }
    }
    Interpreted {
        control,
        decline_renegotiation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(reader: &mut HandshakeReader, mut record: &[u8]) -> Vec<u8> {
        std::iter::from_fn(|| reader.next_message(&mut record)).collect()
    }

    #[test]
    fn handshake_messages_across_records() {
        let mut r = HandshakeReader::default();
        // A NewSessionTicket with a 6-byte body, then a KeyUpdate, in one record.
        let record = [4, 0, 0, 6, 1, 2, 3, 4, 5, 6, 24, 0, 0, 1, 1];
        assert_eq!(types(&mut r, &record), [4, 24]);
        // The same split at every position over two records: the same messages, once each.
        for cut in 0..record.len() {
            let mut r = HandshakeReader::default();
            let mut seen = types(&mut r, &record[..cut]);
            seen.extend(types(&mut r, &record[cut..]));
            assert_eq!(seen, [4, 24], "cut at {cut}");
        }
        // A body longer than the record: skipped into the next one.
        let mut r = HandshakeReader::default();
        assert_eq!(types(&mut r, &[4, 0, 0, 10, 9, 9]), [4]);
        assert_eq!(types(&mut r, &[9; 8]), Vec::<u8>::new());
        assert_eq!(types(&mut r, &[24, 0, 0, 1, 0]), [24]);
    }
}
