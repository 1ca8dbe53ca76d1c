//! An executor's receipt as `seb receipt verify` reads it (and the outcome route carries it):
//! strict JSON parsing, the canonical signing input of its body, and its DER signature checked
//! under a fixed P-384 key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static KEY: std::sync::OnceLock<Option<seb::chain::CertKey>> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let key = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).ok()?;
        Some(seb::chain::CertKey::P384(*key.verifying_key()))
    });
    let Ok(receipt) = seb::receipt::parse(data) else {
        return;
    };
    let Ok(message) = seb::receipt::signing_input(&receipt.body) else {
        return;
    };
    let (Some(key), Some(signature)) = (key, seb::base64url::decode(&receipt.signature)) else {
        return;
    };
    let _ = seb::approval::verify(key, &message, &signature);
});
