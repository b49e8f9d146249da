//! The AEAD limit under kTLS: the kernel never rekeys for us, so our key's records are counted and
//! the connection aborts before the suite's confidentiality limit (see [`TxLimit`]).

use std::os::fd::AsFd;
use std::sync::OnceLock;

use tokio::net::TcpStream;

use crate::relay::splice::CHUNK;
use crate::sys::{self, KtlsCipher};

/// Our key's record budget. The kernel never rekeys for us (see the module documentation of
/// [`crate::relay`]), so the key may protect at most `stop` records, 7/8 of the suite's
/// confidentiality limit.
/// `bound` is an upper bound of the records sent so far: every record carries at least one byte, so
/// after sending `n` bytes at most `n` more records exist. Reads from the backend are sized so that
/// sending them cannot pass `stop`; when the bound could, the exact sequence number is read back from
/// the kernel (TLS_TX): with full records once per `stop - seq` bytes, more often only in the last
/// [`CHUNK`] records. When no room is left, what was read is sent, then the connection aborts.
pub(in crate::relay) struct TxLimit {
    cipher: KtlsCipher,
    bound: u64,
    stop: u64,
    /// The suite's, kept for a release (the stop is computed again where the relay resumes).
    confidentiality_limit: u64,
}

impl TxLimit {
    pub(super) fn new(cipher: KtlsCipher, seq: u64, confidentiality_limit: u64) -> Self {
        let stop = record_stop(confidentiality_limit, test_record_limit());
        Self {
            cipher,
            bound: seq,
            stop,
            confidentiality_limit,
        }
    }

    /// (cipher, confidentiality limit): what a resumed relay needs to count on; the bound is not
    /// kept, the exact sequence number is read from the kernel again.
    pub(super) fn released(&self) -> (KtlsCipher, u64) {
        (self.cipher, self.confidentiality_limit)
    }

    /// How many bytes may be read from the backend (and then sent) without passing the stop.
    pub(super) fn room(&mut self, sock: &TcpStream) -> usize {
        let room = |bound: u64| {
            usize::try_from(self.stop.saturating_sub(bound)).map_or(CHUNK, |r| r.min(CHUNK))
        };
        if room(self.bound) < CHUNK
            && let Ok(seq) = sys::tx_record_seq(sock.as_fd(), self.cipher)
        {
            self.bound = seq;
        }
        room(self.bound)
    }

    pub(super) fn sent(&mut self, bytes: usize) {
        self.bound = self.bound.saturating_add(bytes as u64);
    }
}

/// Where a key stops: 7/8 of the suite's confidentiality limit, or the test limit if that is lower. A
/// testing aid may only bring the stop closer, never raise a safety limit.
fn record_stop(confidentiality_limit: u64, test_limit: Option<u64>) -> u64 {
    let stop = confidentiality_limit - confidentiality_limit / 8;
    test_limit.map_or(stop, |t| t.min(stop))
}

/// `RINGSEAL_TEST_KTLS_RECORD_LIMIT`: a lower record limit, so that tests can reach it with a few
/// megabytes. Not for production: the real limit is the suite's, and a higher value is ignored.
fn test_record_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("RINGSEAL_TEST_KTLS_RECORD_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_record_limit_only_lowers_the_stop() {
        let aes_gcm = 1 << 24;
        assert_eq!(record_stop(aes_gcm, None), aes_gcm - aes_gcm / 8);
        assert_eq!(record_stop(aes_gcm, Some(1000)), 1000);
        assert_eq!(record_stop(aes_gcm, Some(u64::MAX)), aes_gcm - aes_gcm / 8);
    }
}
