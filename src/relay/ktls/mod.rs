//! Kernel TLS: after the rustls handshake the session keys go to the kernel (TLS_TX and TLS_RX), and
//! the relay moves plaintext between the kTLS socket and the backend with `splice(2)` through a pipe
//! each way: the kernel decrypts into the pipe and encrypts out of it, nothing passes through user space.
//!
//! * [`support()`] probes once per process which ciphers the kernel takes, and why not if none.
//! * [`engage`] hands a connection over (the handshake left the socket at a record boundary, see
//!   [`super::handshake`](mod@super::handshake)): it flushes what rustls queued, extracts the keys
//!   and sets them ([`handover`]).
//! * The relay loop ([`relay`]) splices application data and reads every other record with
//!   `recvmsg` ([`control`]).
//! * The AEAD limit: our key's records are counted ([`record_limit`]).

mod control;
mod handover;
mod record_limit;
mod relay;
mod support;

pub(super) use handover::{Engage, Engaged, engage};
pub(super) use relay::{check_resumed, resume};
pub use support::{KtlsSupport, KtlsUnavailable, support};
