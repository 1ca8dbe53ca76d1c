#[tokio::test]
async fn an_answer_past_the_limit_is_refused_not_read_to_its_end() {
    use super::{read_limited, ClientError};
    use http_body_util::Full;
    use hyper::body::Bytes;
    let body = |n: usize| Full::new(Bytes::from(vec![b'x'; n]));
    assert_eq!(read_limited(body(1024), 1024).await.unwrap().len(), 1024);
    assert!(matches!(
        read_limited(body(1025), 1024).await,
        Err(ClientError::TooLarge)
    ));
}

use std::time::Duration;

use super::*;
use crate::ca::{self, CertKind};
use crate::cert::Purpose;
use crate::testkit::{grant, key, now, spki, Ca};

fn service(issuer: &Ca, kind: CertKind) -> Vec<u8> {
    ca::issue_service(
        &issuer.key,
        &issuer.cert,
        spki(&key()),
        &ca::parse_subject("CN=seb-dev broker").unwrap(),
        kind,
        Duration::from_secs(86_400),
        now(),
    )
    .unwrap()
    .to_der_bytes()
    .unwrap()
}

fn tls() -> CertKind {
    CertKind::TlsServer {
        names: vec!["localhost".into()],
    }
}

#[test]
fn only_a_server_certificate_the_root_issued_directly_is_the_broker() {
    let root = Ca::root("root");
    let roots = [root.cert.clone()];
    assert_eq!(
        check_broker_certificate(&service(&root, tls()), &roots, now()),
        Ok(())
    );

    // An intermediate (delegated every role there is) still cannot make a broker.
    let ops = root
        .intermediate_for("ops", None, None, crate::grants::IssuableRoles::ALL)
        .unwrap();
    let err = check_broker_certificate(&service(&ops, tls()), &roots, now()).unwrap_err();
    assert!(err.contains("not issued directly by the root"), "{err}");
    assert!(err.contains("CN=ops"), "{err}");

    // From the root, but without serverAuth: the token key's certificate, an agent's.
    let err = check_broker_certificate(
        &service(&root, CertKind::Signing(Purpose::Token)),
        &roots,
        now(),
    )
    .unwrap_err();
    assert!(err.contains("lacks the serverAuth"), "{err}");
    let agent = root.agent("agent", &grant("*", "**", "60s")).unwrap();
    let err = check_broker_certificate(&agent.to_der_bytes().unwrap(), &roots, now()).unwrap_err();
    assert!(err.contains("lacks the serverAuth"), "{err}");

    // Another root's, and garbage.
    let other = [Ca::root("root").cert];
    let err = check_broker_certificate(&service(&root, tls()), &other, now()).unwrap_err();
    assert!(err.contains("not issued directly by the root"), "{err}");
    assert!(check_broker_certificate(b"\x30\x03\x02\x01\x00", &roots, now()).is_err());
}
