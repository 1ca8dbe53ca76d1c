//! The grants extension of an agent certificate (DER), as the broker reads it on every call.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = seb::grants::GrantSet::from_der(data);
});
