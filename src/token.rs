//! Execution tokens: the claims the broker signs and their JWS compact encoding (RFC 7515,
//! RFC 7519), shared by the broker that mints them and the offline verifier.
//!
//! A token is `BASE64URL(header) . BASE64URL(claims) . BASE64URL(r‖s)` with `alg` ES384 (or
//! ES256 where the site chose a P-256 token key), `typ` `seb-exec+jwt` and `kid` the SHA-256
//! thumbprint of the token certificate. This module never signs by itself: minting takes a
//! signing function, so the key stays in the device.

use serde::{Deserialize, Serialize};

use crate::backend::KeyAlgorithm;
use crate::base64url::encode as b64;

/// The JWS `typ` of execution tokens.
pub const TOKEN_TYPE: &str = "seb-exec+jwt";
/// The `type` of the authorization detail (RFC 9396).
pub const DETAIL_TYPE: &str = "seb_execution";
/// Upper bound on an encoded token the verifier will look at.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// JWS protected header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// `ES384` or `ES256`.
    pub alg: String,
    /// Always [`TOKEN_TYPE`].
    pub typ: String,
    /// base64url SHA-256 of the token certificate's DER.
    pub kid: String,
}

/// An optional claim that, when present, is a string: `null` is refused, as the other
/// verifiers (Python, Go) refuse it, rather than read as absent.
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// The claims of an execution token (ARCHITECTURE.md §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Broker id.
    pub iss: String,
    /// Agent certificate subject (RFC 4514).
    pub sub: String,
    /// 128-bit random token id, base64url; single use.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Proof-of-possession binding to the agent certificate (RFC 8705).
    pub cnf: Confirmation,
    /// What the token authorizes: exactly one entry.
    pub authorization_details: Vec<AuthorizationDetail>,
    /// The parameters' digest at the top level as well (ARCHITECTURE §6 lists it as a claim of
    /// its own): always equal to `authorization_details[0].params_digest`, which verifiers
    /// check. Absent from tokens of brokers before it was added; never `null`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub params_digest: Option<String>,
    /// The broker's latest good self-attestation, when the broker attests.
    pub att: Option<Attestation>,
    /// The audit entry that recorded the grant, when the audit log is enabled.
    pub audit: Option<AuditRef>,
    /// Policy epoch at issuance.
    pub epoch: u64,
    /// Approver signatures for requests that needed approval (empty otherwise).
    pub approvals: Vec<Approval>,
}

/// RFC 8705 confirmation claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// base64url SHA-256 of the agent certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// RFC 9396-style authorization detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationDetail {
    /// Always [`DETAIL_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The operation, exactly as requested and granted.
    pub operation: String,
    /// The resource, exactly as requested and granted.
    pub resource: String,
    /// base64url SHA-384 over the JCS (RFC 8785) form of the parameters.
    pub params_digest: String,
    /// base64url SHA-384 over the JCS form of `{operation, resource, params}`: what approvers
    /// sign.
    pub request_digest: String,
    /// Approvals the grant required (0 when none).
    pub approvals: u32,
    /// The approver group the grant named, when it required approvals: every approver in the
    /// top-level `approvals` claim must hold an approver certificate of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_group: Option<String>,
}

/// The broker's self-attestation at issuance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// base64url of the quoted PCR digest.
    pub pcr_digest: String,
    /// When the self-check passed (Unix seconds).
    pub time: u64,
}

/// Where the grant decision sits in the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRef {
    /// Leaf index.
    pub index: u64,
    /// base64url RFC 6962 leaf hash.
    pub leaf_hash: String,
}

/// One approver's signature over the request (see [`crate::approval`] for the signed
/// message: `seb-approval-v1`, `approve`, the detail's `request_digest` and `cnf.x5t#S256`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// base64url SHA-256 of the approver's certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
    /// base64url DER ECDSA signature over the approval message.
    pub sig: String,
}

/// Errors while encoding a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// JSON encoding failed.
    #[error("cannot encode token JSON")]
    Json(#[source] serde_json::Error),
    /// The signer failed (the device, usually).
    #[error("token signing failed")]
    Sign(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The approver certificate thumbprints a token this broker issued carries (its `approvals`
/// claim): the approvals that counted when it was granted. Reads the payload without checking
/// the signature: only for tokens from the broker's own store. `None` if it does not read.
pub fn approvers_of(token: &str) -> Option<Vec<String>> {
    let payload = crate::base64url::decode(token.split('.').nth(1)?)?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    Some(
        claims["approvals"]
            .as_array()?
            .iter()
            .filter_map(|a| a["x5t#S256"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// The JWS `alg` for a token key.
pub fn alg_for(algorithm: KeyAlgorithm) -> &'static str {
    match algorithm {
        KeyAlgorithm::EcP256 => "ES256",
        KeyAlgorithm::EcP384 => "ES384",
    }
}

/// Encodes header and claims, has `sign` produce the raw `r‖s` signature over the signing
/// input, and returns the compact token.
pub fn mint<E>(
    header: &Header,
    claims: &Claims,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<String, TokenError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let input = signing_input(header, claims)?;
    let signature = sign(input.as_bytes()).map_err(|e| TokenError::Sign(Box::new(e)))?;
    Ok(assemble(input, &signature))
}

/// The JWS signing input `base64url(header) "." base64url(claims)`.
pub fn signing_input(header: &Header, claims: &Claims) -> Result<String, TokenError> {
    let header = serde_json::to_vec(header).map_err(TokenError::Json)?;
    let claims = serde_json::to_vec(claims).map_err(TokenError::Json)?;
    let mut input = String::with_capacity(640);
    input.push_str(&b64(&header));
    input.push('.');
    input.push_str(&b64(&claims));
    Ok(input)
}

/// The compact token: the signing input, ".", and the base64url raw `r‖s` signature.
pub fn assemble(mut signing_input: String, signature: &[u8]) -> String {
    signing_input.push('.');
    signing_input.push_str(&b64(signature));
    signing_input
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base64url;

    fn claims() -> Claims {
        Claims {
            iss: "seb-test".into(),
            sub: "CN=agent".into(),
            jti: b64(&[7; 16]),
            iat: 1_700_000_000,
            nbf: 1_700_000_000,
            exp: 1_700_000_060,
            cnf: Confirmation {
                x5t_s256: b64(&[1; 32]),
            },
            params_digest: Some(b64(&[2; 48])),
            authorization_details: vec![AuthorizationDetail {
                kind: DETAIL_TYPE.into(),
                operation: "deploy.rollout".into(),
                resource: "prod/payments/api".into(),
                params_digest: b64(&[2; 48]),
                request_digest: b64(&[3; 48]),
                approvals: 0,
                approval_group: None,
            }],
            att: None,
            audit: None,
            epoch: 1,
            approvals: vec![],
        }
    }

    #[test]
    fn compact_form_has_three_parts_and_round_trips_the_claims() {
        let header = Header {
            alg: "ES384".into(),
            typ: TOKEN_TYPE.into(),
            kid: b64(&[9; 32]),
        };
        let token = mint(&header, &claims(), |input: &[u8]| {
            assert!(input.iter().filter(|b| **b == b'.').count() == 1);
            Ok::<_, std::io::Error>(vec![0xab; 96])
        })
        .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decoded: Claims =
            serde_json::from_slice(&base64url::decode(parts[1]).unwrap()).unwrap();
        assert_eq!(decoded, claims());
        assert_eq!(base64url::decode(parts[2]).unwrap(), vec![0xab; 96]);
        assert!(!token.contains('='), "no padding");
    }

    #[test]
    fn signer_failure_is_an_error() {
        let header = Header {
            alg: "ES384".into(),
            typ: TOKEN_TYPE.into(),
            kid: String::new(),
        };
        let err = mint(&header, &claims(), |_: &[u8]| {
            Err(std::io::Error::other("device gone"))
        })
        .unwrap_err();
        assert!(matches!(err, TokenError::Sign(_)));
    }
}
