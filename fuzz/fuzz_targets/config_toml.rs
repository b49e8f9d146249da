//! `Config::from_toml` on a config file whose `{placeholders}` name the fixture PKI (see `src/lib.rs`).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ringseal_fuzz::Pki;

static PKI: LazyLock<Pki> = LazyLock::new(Pki::for_fuzzing);

fuzz_target!(init: ringseal_fuzz::init("config_toml", env!("CARGO_MANIFEST_DIR")), |data: &[u8]| {
    ringseal_fuzz::config_toml(&PKI, data);
});
