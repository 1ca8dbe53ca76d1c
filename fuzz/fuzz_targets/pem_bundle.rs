//! PEM certificate chains (client chains, trust bundles) and single certificates.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = seb::cert::Certificate::parse(data);
    let _ = seb::cert::Certificate::parse_pem_chain(data);
    let _ = seb::verify::TrustStore::from_pem(data);
});
