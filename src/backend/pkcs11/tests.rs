use super::*;

#[test]
fn curve_params_match_their_oids() {
    assert_eq!(ec_params_der("1.2.840.10045.3.1.7").unwrap(), P256_PARAMS);
    assert_eq!(ec_params_der("1.3.132.0.34").unwrap(), P384_PARAMS);
}

#[test]
fn settings_debug_hides_the_pin() {
    let settings = Pkcs11Settings {
        module: "/x.so".into(),
        token: TokenSelector {
            label: "t".into(),
            serial: None,
        },
        pin: SecretString::from("123456-secret"),
        sessions: 1,
    };
    let shown = format!("{settings:?}");
    assert!(!shown.contains("123456-secret"), "{shown}");
    assert!(shown.contains("redacted"));
}
