//! A certificate signing request (DER or PEM) handed to the CA.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = seb::ca::csr::verify(data);
});
