//! An approver's DER ECDSA signature over an approval message, checked under a fixed P-384
//! key: the first 8 bytes choose the message, the rest is the signature.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static KEY: std::sync::OnceLock<Option<seb::chain::CertKey>> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let key = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).ok()?;
        Some(seb::chain::CertKey::P384(*key.verifying_key()))
    });
    let Some(key) = key else { return };
    let (head, signature) = data.split_at(data.len().min(8));
    let message = seb::approval::message(
        seb::approval::Decision::Approve,
        &hex(head),
        "x5t-of-the-agent",
    );
    let _ = seb::approval::verify(key, &message, signature);
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
