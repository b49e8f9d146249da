//! The bytes as a certificate chain, a CA bundle, a private key and a CRL file of `[tls]` (see
//! `src/lib.rs` for the properties).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ringseal_fuzz::Pki;

static PKI: LazyLock<Pki> = LazyLock::new(Pki::for_fuzzing);

fuzz_target!(init: ringseal_fuzz::init("pem_crl", env!("CARGO_MANIFEST_DIR")), |data: &[u8]| {
    ringseal_fuzz::pem_crl(&PKI, data);
});
