//! A cassandra.yaml derived into a ringseal config (`config::cassandra::derive_bytes`), which must then
//! deserialize as a ringseal config (see `src/lib.rs` for the properties).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ringseal_fuzz::Pki;

static PKI: LazyLock<Pki> = LazyLock::new(Pki::for_fuzzing);

fuzz_target!(init: ringseal_fuzz::init("cassandra_yaml", env!("CARGO_MANIFEST_DIR")), |data: &[u8]| {
    ringseal_fuzz::cassandra_yaml(&PKI, data);
});
