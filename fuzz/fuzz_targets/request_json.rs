//! The body of every POST: the broker's strict JSON parser (duplicate keys, depth, numbers),
//! then the request parameters' canonical form (RFC 8785) as tokens bind them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = seb::json::parse_strict(data) {
        let _ = seb::canonical::canonicalize(&value);
    }
    let _ = seb::verify::Params::parse(data);
});
