//! `listener::sniff::sniff` on the first bytes of a connection (see `src/lib.rs` for the properties).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ringseal_fuzz::init("sniff", env!("CARGO_MANIFEST_DIR")), |data: &[u8]| {
    ringseal_fuzz::sniff(data);
});
