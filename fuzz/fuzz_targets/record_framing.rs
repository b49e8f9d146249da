//! The handshake driver's record framing (`relay::handshake::{frame, wakes}`): a flags byte (the
//! record layer's state, the size of the pieces the bytes arrive in), then the peer's bytes (see
//! `src/lib.rs` for the properties).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ringseal_fuzz::init("record_framing", env!("CARGO_MANIFEST_DIR")), |data: &[u8]| {
    ringseal_fuzz::record_framing(data);
});
