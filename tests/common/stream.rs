//! Seeded random streams, hashed as they are written and read: "nothing lost, nothing changed" checks
//! without keeping hundreds of MiB in memory.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::within;

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
