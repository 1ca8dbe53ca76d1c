//! TPM structures in attestation evidence: TPMS_ATTEST (quote) and TPMT_SIGNATURE.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = seb::attest::tpm_types::parse_quote(data);
    let _ = seb::attest::tpm_types::parse_signature(data);
});
