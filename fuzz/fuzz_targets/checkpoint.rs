//! An audit checkpoint (signed note text) as `seb audit verify` reads it from a broker.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = seb::audit::checkpoint::parse_note(text);
    let _ = seb::audit::checkpoint::Checkpoint::parse_body(text);
});
