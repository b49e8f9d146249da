//! Seeded random edits of an input, for the short deterministic fuzzing runs in `cargo test` (the
//! real fuzzing is `fuzz/run.sh`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One random edit: flip a bit, set a byte or a big-endian u32 to a boundary value, cut, insert or
/// delete bytes, or copy a slice elsewhere.
pub fn mutate(rng: &mut ChaCha8Rng, data: &mut Vec<u8>) {
    if data.is_empty() {
        data.push(rng.random());
        return;
    }
    let at = rng.random_range(0..data.len());
    match rng.random_range(0..7) {
        0 => data[at] ^= 1 << rng.random_range(0..8),
        1 => data[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
        2 => {
            let value: u32 = [
                0,
                1,
                2,
                20,
                0x7fff_ffff,
                0x8000_0000,
                u32::MAX,
                rng.random(),
            ][rng.random_range(0..8)];
            let end = (at + 4).min(data.len());
            data[at..end].copy_from_slice(&value.to_be_bytes()[..end - at]);
        }
        3 => data.truncate(at),
        4 => {
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, bytes);
        }
        5 => {
            let end = (at + rng.random_range(1..=8)).min(data.len());
            data.drain(at..end);
        }
        _ => {
            let len = rng.random_range(1..=64).min(data.len() - at);
            let slice = data[at..at + len].to_vec();
            let to = rng.random_range(0..=data.len());
            data.splice(to..to, slice);
        }
    }
}
