//! `jks::parse` on arbitrary bytes: with the password the seed corpus was made with (so seeds start out
//! as valid stores), and with the input's first bytes as the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringseal::tls::jks;

fuzz_target!(|data: &[u8]| {
    let _ = (jks::is_jks(data), jks::is_jceks(data));
    check(jks::parse(data, "changeit"));
    // First byte: the password's length (0..=31), then the password (lossy UTF-8), then the store.
    if let Some((&n, rest)) = data.split_first() {
        let (password, store) = rest.split_at(usize::from(n % 32).min(rest.len()));
        check(jks::parse(store, &String::from_utf8_lossy(password)));
    }
});

/// Formats whatever came back (Display and Debug must not panic either); a key must be DER.
fn check(result: Result<jks::Jks, jks::JksError>) {
    match result {
        Ok(store) => {
            for entry in &store.entries {
                if let jks::Entry::PrivateKey { pkcs8, .. } = entry {
                    assert_eq!(pkcs8.first(), Some(&0x30));
                }
            }
            let _ = format!("{store:?}");
        }
        Err(err) => {
            let _ = format!("{err} {err:?}");
        }
    }
}
