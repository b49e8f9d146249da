//! An allow-list (TOML), a NUL byte, a DER certificate: how the certificate is matched against the
//! list and against an endpoint address (see `src/lib.rs` for the properties).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ringseal_fuzz::init("allow_list", env!("CARGO_MANIFEST_DIR")), |data: &[u8]| {
    ringseal_fuzz::allow_list(data);
});
