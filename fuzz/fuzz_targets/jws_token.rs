//! An execution token (compact JWS) as an executor verifies it: size, base64url, header and
//! claims JSON, signature form. The trust store holds no certificate the token can name, so
//! every input ends in an error; the point is that none panics or hangs on the way.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let Ok(trust) = seb::verify::TrustStore::from_pem(b"") else { return };
    let rules = seb::verify::TokenRules::at(std::time::SystemTime::UNIX_EPOCH);
    let _ = seb::verify::verify_signature_only(token, &trust, &rules);
});
