//! A measured-boot event log (JSON) sent with attestation evidence, replayed per PCR.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = seb::attest::eventlog::EventLog::from_json(data) {
        for pcr in 0..24 {
            let _ = log.replay(pcr);
        }
    }
});
