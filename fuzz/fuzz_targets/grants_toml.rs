//! A grants file (TOML), as `seb cert issue --grants` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = seb::grants::GrantSet::from_toml_str(text);
    }
});
