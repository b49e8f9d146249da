//! Seeded random streams, hashed as they are written and read: "nothing lost, nothing changed" checks
//! without keeping hundreds of MiB in memory.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::within;

pub const MIB: usize = 1024 * 1024;

/// Seeded random data in 256 KiB chunks, hashed as it is produced.
pub struct Seeded {
    rng: ChaCha8Rng,
    hash: Sha256,
    buf: Vec<u8>,
    left: usize,
}

impl Seeded {
    pub fn new(seed: u64, len: usize) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            hash: Sha256::new(),
            buf: vec![0u8; 256 * 1024],
            left: len,
        }
    }

    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        let n = self.left.min(self.buf.len());
        if n == 0 {
            return None;
        }
        self.left -= n;
        self.rng.fill_bytes(&mut self.buf[..n]);
        self.hash.update(&self.buf[..n]);
        Some(&self.buf[..n])
    }

    pub fn sha256(self) -> Vec<u8> {
        self.hash.finalize().to_vec()
    }
}

/// Writes a seeded stream; when `pause` is given, waits for it halfway. Returns the stream's SHA-256.
pub async fn send_seeded(
    w: &mut (impl AsyncWrite + Unpin),
    seed: u64,
    len: usize,
    mut pause: Option<oneshot::Receiver<()>>,
) -> Vec<u8> {
    let mut data = Seeded::new(seed, len);
    while let Some(chunk) = data.next_chunk() {
        w.write_all(chunk).await.unwrap();
        if data.left <= len / 2
            && let Some(rx) = pause.take()
        {
            within("the other side's close", rx).await.unwrap();
        }
    }
    data.sha256()
}

pub fn expected_hash(seed: u64, len: usize) -> Vec<u8> {
    let mut data = Seeded::new(seed, len);
    while data.next_chunk().is_some() {}
    data.sha256()
}

/// Reads to a clean end of stream; returns (length, SHA-256). Panics on an error (e.g. a TLS stream
/// that ended without close_notify, which tokio-rustls reports as UnexpectedEof).
pub async fn recv_all(r: &mut (impl AsyncRead + Unpin)) -> (usize, Vec<u8>) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("stream must end cleanly");
        if n == 0 {
            return (total, hash.finalize().to_vec());
        }
        hash.update(&buf[..n]);
        total += n;
    }
}

/// The SHA-256 of the first `n` bytes of the seeded stream (`seed`, `len`): what a receiver that got
/// `n` bytes of it must hash to.
pub fn prefix_hash(seed: u64, len: usize, n: usize) -> Vec<u8> {
    assert!(n <= len, "received {n} bytes of a {len}-byte stream");
    let mut data = Seeded::new(seed, len);
    let mut hash = Sha256::new();
    let mut left = n;
    while left > 0 {
        let chunk = data.next_chunk().expect("n <= len");
        let k = left.min(chunk.len());
        hash.update(&chunk[..k]);
        left -= k;
    }
    hash.finalize().to_vec()
}

/// Writes a seeded stream until it is all written or a write fails; returns the bytes written and
/// how writing ended. Never panics: a failed write is what an aborted connection must show.
pub async fn try_send_seeded(
    w: &mut (impl AsyncWrite + Unpin),
    seed: u64,
    len: usize,
) -> (usize, Result<(), std::io::ErrorKind>) {
    let mut data = Seeded::new(seed, len);
    let mut sent = 0;
    while let Some(chunk) = data.next_chunk() {
        if let Err(e) = w.write_all(chunk).await {
            return (sent, Err(e.kind()));
        }
        sent += chunk.len();
    }
    (sent, Ok(()))
}

/// What a reader received, hashed as it arrived, and how its stream ended.
pub struct Sink {
    hash: Sha256,
    pub len: usize,
    buf: Vec<u8>,
    /// `Ok(())`: a clean end (EOF; for TLS, close_notify); otherwise the error's kind.
    pub end: Option<Result<(), std::io::ErrorKind>>,
}

impl Default for Sink {
    fn default() -> Self {
        Self {
            hash: Sha256::new(),
            len: 0,
            buf: vec![0u8; 256 * 1024],
            end: None,
        }
    }
}

impl Sink {
    /// Reads until at least `at_least` bytes have arrived in all (`None`: until the stream ends, cleanly
    /// or not), publishing the running length on `progress`. Returns false once the stream has ended.
    pub async fn read(
        &mut self,
        r: &mut (impl AsyncRead + Unpin),
        at_least: Option<usize>,
        progress: Option<&tokio::sync::watch::Sender<usize>>,
    ) -> bool {
        while self.end.is_none() && at_least.is_none_or(|n| self.len < n) {
            match r.read(&mut self.buf).await {
                Ok(0) => self.end = Some(Ok(())),
                Ok(n) => {
                    self.hash.update(&self.buf[..n]);
                    self.len += n;
                    if let Some(p) = progress {
                        p.send_replace(self.len);
                    }
                }
                Err(e) => self.end = Some(Err(e.kind())),
            }
        }
        self.end.is_none()
    }

    pub fn sha256(&self) -> Vec<u8> {
        self.hash.clone().finalize().to_vec()
    }
}
