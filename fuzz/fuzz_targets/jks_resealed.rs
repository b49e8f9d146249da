//! `jks::parse` on the input with its last 20 bytes replaced by the correct integrity digest for
//! "changeit": almost every mutation of a seed then passes the password check, so the fuzzer spends its
//! time in the entry, certificate and key-decryption code behind it.
#![no_main]

use aws_lc_rs::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};
use libfuzzer_sys::fuzz_target;
use ringseal::tls::jks;

const PASSWORD: &str = "changeit";

fuzz_target!(|data: &[u8]| {
    let mut store = data.to_vec();
    if let Some(body) = store.len().checked_sub(20) {
        let mut digest = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
        let password: Vec<u8> = PASSWORD.encode_utf16().flat_map(u16::to_be_bytes).collect();
        digest.update(&password);
        digest.update(b"Mighty Aphrodite");
        digest.update(&store[..body]);
        store[body..].copy_from_slice(digest.finish().as_ref());
    }
    match jks::parse(&store, PASSWORD) {
        Ok(parsed) => {
            for entry in &parsed.entries {
                if let jks::Entry::PrivateKey { pkcs8, .. } = entry {
                    assert_eq!(pkcs8.first(), Some(&0x30));
                }
            }
            let _ = format!("{parsed:?}");
        }
        // The digest is right whenever the structure ends exactly 20 bytes before the end, and
        // anything else is trailing data or a truncation: a resealed store is never "wrong password".
        Err(err) => {
            assert!(!matches!(err, jks::JksError::WrongPassword));
            let _ = format!("{err} {err:?}");
        }
    }
});
