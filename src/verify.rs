//! The offline verifier for execution tokens: what an executor runs before it touches
//! production.
//!
//! [`verify_token`] checks a compact JWS token against a [`TrustStore`] (the PEM bundle the
//! broker publishes at `GET /v1/trust`): the signing certificate, found by `kid`, must chain to
//! a root in the bundle; the signature, header, lifetime, policy epoch and the single
//! authorization detail must check out; and the action the executor is about to perform
//! (operation, resource, parameters) and the agent binding must match exactly. The only way to
//! build [`Expectations`] names the action and the binding; checking a token's signature alone
//! takes the separate, explicit [`verify_signature_only`], whose result is not a
//! [`VerifiedToken`].
//!
//! This module is pure: no I/O, no clock (the caller passes `now`), no device, no async
//! runtime. It compiles with `--no-default-features`, so an executor links nothing else. It
//! never accepts a token on doubt: every failure is a [`VerifyError`] with a stable
//! [`VerifyError::code`], and nothing is returned from an unverified token.

use std::time::{Duration, SystemTime};

use x509_cert::ext::pkix::BasicConstraints;

use crate::base64url;
use crate::cert::{CertError, Certificate, Purpose, SEB_GRANTS_OID};
use crate::chain::{self, ChainError, PurposeError};
use crate::time::unix;
use crate::token::{Claims, Header};

mod error;
mod jws;

pub use error::VerifyError;
#[cfg(test)]
use jws::strict_b64;
// Format, header, signature and time only, with a signer the caller picks: the broker's
// redemption uses it with its own token key. Not public: a verifier outside the crate goes
// through `Expectations` (the action and agent too) or `verify_signature_only`.
pub(crate) use jws::decode_verified;
pub use jws::{Decoded, TokenRules};

/// Default longest token lifetime (`exp - nbf`) accepted.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// The clock skew tolerated on a token's `nbf` and `iat`: by the offline verifier (unless the
/// caller sets another) and by the broker when it redeems. Executors' and the broker's clocks
/// need agree only this closely; a token's `exp` gets no grace.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// The offline verifier's default leeway: [`CLOCK_SKEW`].
pub const DEFAULT_LEEWAY: Duration = CLOCK_SKEW;
/// Largest trust bundle accepted, in bytes.
pub const MAX_BUNDLE_LEN: usize = 4 * 1024 * 1024;
/// Most certificates in a trust bundle.
pub const MAX_BUNDLE_CERTS: usize = 64;

/// The certificates an executor trusts: roots (the self-signed certificates of the bundle)
/// and everything else the broker publishes (intermediates, token, audit, TLS certificates).
#[derive(Clone, Debug)]
pub struct TrustStore {
    roots: Vec<Certificate>,
    others: Vec<Certificate>,
}

impl TrustStore {
    /// Reads a PEM bundle (`GET /v1/trust`, or the broker's `trust/*.pem` concatenated).
    pub fn from_pem(bundle: &[u8]) -> Result<Self, VerifyError> {
        if bundle.len() > MAX_BUNDLE_LEN {
            return Err(VerifyError::TrustBundle {
                reason: format!(
                    "{} bytes, more than the limit of {MAX_BUNDLE_LEN}",
                    bundle.len()
                ),
            });
        }
        let certs = Certificate::parse_pem_chain(bundle).map_err(|e: CertError| {
            VerifyError::TrustBundle {
                reason: e.to_string(),
            }
        })?;
        Self::from_certificates(certs)
    }

    /// Sorts certificates into roots (self-issued, and self-signed: the signature is checked)
    /// and the rest.
    pub fn from_certificates(certs: Vec<Certificate>) -> Result<Self, VerifyError> {
        if certs.len() > MAX_BUNDLE_CERTS {
            return Err(VerifyError::TrustBundle {
                reason: format!(
                    "{} certificates, more than the limit of {MAX_BUNDLE_CERTS}",
                    certs.len()
                ),
            });
        }
        let roots =
            chain::bundle_roots(&certs).map_err(|reason| VerifyError::TrustBundle { reason })?;
        let others: Vec<Certificate> = certs.into_iter().filter(|c| !c.is_self_issued()).collect();
        if roots.is_empty() {
            return Err(VerifyError::TrustBundle {
                reason: "no self-signed root certificate".into(),
            });
        }
        Ok(TrustStore { roots, others })
    }

    /// Roots: the self-signed certificates of `pinned` (what the caller trusts); path
    /// candidates: the certificates of `published` that are not self-issued (a broker's bundle
    /// or trust directory may extend a path, never add a root).
    pub fn pinned_with(
        pinned: Vec<Certificate>,
        published: Vec<Certificate>,
    ) -> Result<Self, VerifyError> {
        let mut certs = pinned;
        certs.extend(published.into_iter().filter(|c| !c.is_self_issued()));
        Self::from_certificates(certs)
    }

    /// The trusted roots.
    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// The certificate whose `kid` (base64url SHA-256 of its DER) is `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Certificate> {
        self.others.iter().find(|c| {
            c.thumbprint_sha256()
                .is_ok_and(|t| base64url::encode(&t).as_bytes() == kid.as_bytes())
        })
    }

    /// Every certificate of the bundle that is not a root (intermediates, service
    /// certificates).
    pub fn others(&self) -> &[Certificate] {
        &self.others
    }

    /// The CA certificates that are not roots: the intermediates paths may go through.
    pub(crate) fn intermediates(&self) -> Vec<Certificate> {
        self.others.iter().filter(|c| is_ca(c)).cloned().collect()
    }
}

/// What the executor is about to do. A token verifies only if it authorizes exactly this.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    operation: String,
    resource: String,
    params: Params,
}

impl Action {
    /// The operation and resource about to be acted on, compared exactly with the token's (no
    /// normalisation, no wildcards), and the parameters about to be used.
    pub fn new(operation: impl Into<String>, resource: impl Into<String>, params: Params) -> Self {
        Action {
            operation: operation.into(),
            resource: resource.into(),
            params,
        }
    }

    /// The operation.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }
}

/// Whether the token's `cnf.x5t#S256` binding to an agent certificate is checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Binding {
    /// The agent presented this certificate to the executor (for example over mutual TLS):
    /// the token must be bound to it (compared by SHA-256 thumbprint).
    Agent(Box<Certificate>),
    /// No agent presented a certificate to this executor (the token came through a queue or a
    /// scheduler), so there is nothing to compare `cnf` with. Chosen explicitly, never by
    /// default; single use still comes from redemption at the broker.
    NotPresented,
}

impl Binding {
    /// The token must be bound to `certificate`, which the agent presented.
    pub fn agent(certificate: Certificate) -> Self {
        Binding::Agent(Box::new(certificate))
    }
}

/// What an executor requires of a token before it acts: the action it is about to perform and
/// the agent binding are required by the only constructor, so a verifier that checks nothing
/// cannot be built by accident. For a token's own validity alone (audits, inspection) there is
/// [`verify_signature_only`], whose result is of another type.
#[derive(Clone, Debug)]
pub struct Expectations {
    rules: TokenRules,
    issuer: Option<String>,
    action: Action,
    binding: Binding,
    approvers: Vec<Certificate>,
}

impl Expectations {
    /// The token must authorize `action`, be bound as `binding` says, and be valid at `now`
    /// with the default leeway ([`CLOCK_SKEW`]), lifetime cap ([`DEFAULT_MAX_LIFETIME`]) and
    /// minimum epoch 0.
    pub fn new(now: SystemTime, action: Action, binding: Binding) -> Self {
        Expectations {
            rules: TokenRules::at(now),
            issuer: None,
            action,
            binding,
            approvers: Vec::new(),
        }
    }

    /// The broker id the token must name in `iss`.
    pub fn issuer(mut self, broker_id: impl Into<String>) -> Self {
        self.issuer = Some(broker_id.into());
        self
    }

    /// Refuse tokens of a policy epoch below `min_epoch`.
    pub fn min_epoch(mut self, min_epoch: u64) -> Self {
        self.rules.min_epoch = min_epoch;
        self
    }

    /// Clock skew tolerated on `nbf` and `iat` (default [`CLOCK_SKEW`]).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.rules.leeway = leeway;
        self
    }

    /// Longest `exp - nbf` accepted (default [`DEFAULT_MAX_LIFETIME`]).
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.rules.max_lifetime = max_lifetime;
        self
    }

    /// The approvers' certificates (a bundle of them; CA certificates among them may serve as
    /// intermediates): each approval in a token must name one of these. A token issued after
    /// approvals fails without them.
    pub fn approvers(mut self, certificates: Vec<Certificate>) -> Self {
        self.approvers = certificates;
        self
    }

    /// The action the token must authorize.
    pub fn action(&self) -> &Action {
        &self.action
    }
}

/// The parameters an executor is about to use, parsed from the very text it will act on with
/// the broker's strict parser ([`crate::json::parse_strict`]: duplicate keys, nesting, numbers),
/// so that the digest compared with the token's `params_digest` is the digest of one meaning.
///
/// There is deliberately no constructor from a `serde_json::Value`: by the time a document is a
/// `Value`, a lenient parser may already have chosen one of two duplicate keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    value: serde_json::Value,
    digest: String,
}

impl Params {
    /// Parses `text` strictly; it must be a JSON object with a canonical form (RFC 8785).
    pub fn parse(text: &[u8]) -> Result<Self, VerifyError> {
        let invalid = |reason: String| VerifyError::InvalidParams { reason };
        let value = crate::json::parse_strict(text).map_err(|e| invalid(e.to_string()))?;
        if !value.is_object() {
            return Err(invalid("the parameters must be a JSON object".into()));
        }
        let digest = crate::canonical::params_digest(&value).map_err(|e| invalid(e.to_string()))?;
        Ok(Params {
            value,
            digest: base64url::encode(&digest),
        })
    }

    /// The parsed parameters: what the executor should act on, since this is what was checked.
    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }

    /// base64url SHA-384 of their JCS form, as in the token's `params_digest`.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// A token that passed every check, the action and the binding included.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    /// The protected header.
    pub header: Header,
    /// The claims.
    pub claims: Claims,
    /// The certificate whose key signed the token.
    pub signer: Certificate,
}

/// A token whose signature, header, signing certificate, lifetime and epoch verified, and of
/// which nothing else was checked: not the operation, resource, parameters or agent binding.
/// Not a reason to act; its own type so that it cannot be passed where a [`VerifiedToken`] is
/// wanted.
#[derive(Clone, Debug)]
pub struct SignatureOnly {
    /// The protected header.
    pub header: Header,
    /// The claims, unchecked against any action.
    pub claims: Claims,
    /// The certificate whose key signed the token.
    pub signer: Certificate,
}

/// Verifies a compact JWS execution token offline: [`decode_verified`] (format, header,
/// signature, lifetime, epoch, one authorization detail) with the signer found in the trust
/// bundle, then the caller's expectations.
///
/// The signer is the certificate whose thumbprint is the header's `kid`. It must chain to a
/// bundle root ([`chain::validate`]), every certificate on its path must be valid at `now`,
/// and it must be a token signing certificate issued directly by the root
/// ([`chain::ValidatedChain::require_service`]: not a CA, digitalSignature, the token key
/// purpose and no other extended key usage, no seb identity extensions). Then the operation,
/// resource and parameters must be exactly the expected action's, the binding checked unless
/// [`Binding::NotPresented`], and the issuer, if given, the expected broker id.
pub fn verify_token(
    token: &str,
    trust: &TrustStore,
    expect: &Expectations,
) -> Result<VerifiedToken, VerifyError> {
    let unchecked = verify_signature_only(token, trust, &expect.rules)?;
    check_expectations(&unchecked.claims, expect)?;
    check_approvals(&unchecked.claims, trust, expect)?;
    Ok(VerifiedToken {
        header: unchecked.header,
        claims: unchecked.claims,
        signer: unchecked.signer,
    })
}

/// Verifies only what a token says about itself (everything [`verify_token`] checks before
/// the expectations), for audits and inspection. The result says nothing about whether the
/// token authorizes any particular action: never act on it.
pub fn verify_signature_only(
    token: &str,
    trust: &TrustStore,
    rules: &TokenRules,
) -> Result<SignatureOnly, VerifyError> {
    let Decoded {
        header,
        claims,
        signer,
    } = decode_trusted(token, trust, rules)?;
    Ok(SignatureOnly {
        header,
        claims,
        signer: signer.clone(),
    })
}

/// [`decode_verified`] with the signer looked up in the trust bundle ([`trusted_signer`]).
fn decode_trusted<'t>(
    token: &str,
    trust: &'t TrustStore,
    rules: &TokenRules,
) -> Result<Decoded<'t>, VerifyError> {
    decode_verified(token, rules, |header| {
        trusted_signer(trust, &header.kid, rules.now)
    })
}

/// The certificate named by `kid`, if it chains to a root of `trust`, is valid with its whole
/// path at `now`, and is the root's token signing certificate.
fn trusted_signer<'t>(
    trust: &'t TrustStore,
    kid: &str,
    now: SystemTime,
) -> Result<&'t Certificate, VerifyError> {
    let signer = trust.by_kid(kid).ok_or_else(|| VerifyError::UnknownKey {
        kid: kid.to_owned(),
    })?;
    let intermediates = trust.intermediates();
    let path = chain::validate(signer, &intermediates, trust.roots(), now).map_err(|source| {
        match source {
            // The root's validity is a matter of time, like every other certificate's.
            ChainError::RootExpired {
                subject,
                now,
                not_after,
            } => VerifyError::CertificateExpired {
                subject,
                now,
                not_after,
            },
            ChainError::RootNotYetValid {
                subject,
                now,
                not_before,
            } => VerifyError::CertificateNotYetValid {
                subject,
                now,
                not_before,
            },
            source => VerifyError::UntrustedCertificate { source },
        }
    })?;
    for cert in path.path() {
        check_validity(cert, now)?;
    }
    path.require_service(Purpose::Token).map_err(|e| match e {
        PurposeError::NotAKeyCertificate {
            subject, reason, ..
        } => VerifyError::NotATokenCertificate { subject, reason },
        PurposeError::WrongKeyPurpose {
            subject, reason, ..
        } => VerifyError::WrongKeyPurpose { subject, reason },
        PurposeError::NotIssuedByRoot { subject, issuer } => {
            VerifyError::NotIssuedByRoot { subject, issuer }
        }
    })?;
    Ok(signer)
}

fn check_expectations(claims: &Claims, expect: &Expectations) -> Result<(), VerifyError> {
    // decode_verified guarantees exactly one detail.
    let Some(detail) = claims.authorization_details.first() else {
        return Err(VerifyError::InvalidAuthorizationDetails {
            reason: "no entries".into(),
        });
    };
    if let Some(expected) = &expect.issuer {
        if *expected != claims.iss {
            return Err(VerifyError::WrongIssuer {
                expected: expected.clone(),
                token: claims.iss.clone(),
            });
        }
    }
    let action = &expect.action;
    if action.operation != detail.operation {
        return Err(VerifyError::WrongOperation {
            expected: action.operation.clone(),
            token: detail.operation.clone(),
        });
    }
    if action.resource != detail.resource {
        return Err(VerifyError::WrongResource {
            expected: action.resource.clone(),
            token: detail.resource.clone(),
        });
    }
    if action.params.digest() != detail.params_digest {
        return Err(VerifyError::WrongParams {
            expected: action.params.digest().to_owned(),
            token: detail.params_digest.clone(),
        });
    }
    // What approvers signed is the request digest: it must be this action's, or approvals
    // given for another request of the same agent could be carried into this token.
    let digest = crate::canonical::request_digest(
        &action.operation,
        &action.resource,
        action.params.value(),
    )
    .map_err(|e| VerifyError::InvalidParams {
        reason: e.to_string(),
    })?;
    if base64url::encode(&digest) != detail.request_digest {
        return Err(VerifyError::InvalidAuthorizationDetails {
            reason: "request_digest is not the digest of this operation, resource and \
                     parameters"
                .into(),
        });
    }
    if let Binding::Agent(agent) = &expect.binding {
        let thumbprint = agent
            .thumbprint_sha256()
            .map_err(|e| VerifyError::InvalidClaims {
                reason: format!("cannot encode the presented certificate: {e}"),
            })?;
        let presented = base64url::encode(&thumbprint);
        if presented != claims.cnf.x5t_s256 {
            return Err(VerifyError::WrongCertificate {
                presented,
                token: claims.cnf.x5t_s256.clone(),
            });
        }
    }
    Ok(())
}

/// The quorum, offline: every approval in the token names a given approver certificate that
/// chains to a root of the bundle, was valid (with its path) when the token was issued, has
/// the approver role and the group the token names, is not the agent (certificate, key or
/// subject) and appears once; its signature verifies over the approval message derived from the
/// token ([`crate::approval::message`]: `approve`, the detail's `request_digest`,
/// `cnf.x5t#S256`); and there are at least as many as the detail requires. With the agent's
/// certificate presented ([`Binding::Agent`]), the rule of the agent's grant that allows the
/// action must be met too.
fn check_approvals(
    claims: &Claims,
    trust: &TrustStore,
    expect: &Expectations,
) -> Result<(), VerifyError> {
    let Some(detail) = claims.authorization_details.first() else {
        return Err(VerifyError::InvalidAuthorizationDetails {
            reason: "no entries".into(),
        });
    };
    let invalid = |reason: &str| VerifyError::InvalidApprovals {
        reason: reason.to_owned(),
    };
    let rule = grant_rule(claims, expect)?;
    if let Some((required, group)) = &rule {
        if detail.approvals < *required {
            return Err(VerifyError::ApprovalQuorumNotMet {
                required: *required,
                valid: detail.approvals,
            });
        }
        if detail.approval_group.as_deref() != Some(group.as_str()) {
            return Err(invalid(
                "the token names another approver group than the agent's grant",
            ));
        }
    }
    if detail.approvals == 0 {
        if !claims.approvals.is_empty() || detail.approval_group.is_some() {
            return Err(invalid("approvals in a token whose grant required none"));
        }
        return Ok(());
    }
    let Some(group) = &detail.approval_group else {
        return Err(invalid(
            "approvals are required but no approval_group is named",
        ));
    };
    let issued = crate::time::from_unix(claims.iat);
    let message = crate::approval::message(
        crate::approval::Decision::Approve,
        &detail.request_digest,
        &claims.cnf.x5t_s256,
    );
    let agent_key = match &expect.binding {
        Binding::Agent(agent) => Some(spki_der(agent)?),
        Binding::NotPresented => None,
    };
    let mut intermediates = trust.intermediates();
    intermediates.extend(expect.approvers.iter().filter(|c| is_ca(c)).cloned());
    let mut seen: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut valid = 0u32;
    for approval in &claims.approvals {
        let cert = expect
            .approvers
            .iter()
            .find(|c| {
                c.thumbprint_sha256()
                    .is_ok_and(|t| base64url::encode(&t) == approval.x5t_s256)
            })
            .ok_or_else(|| VerifyError::UnknownApprover {
                x5t: approval.x5t_s256.clone(),
            })?;
        let subject = cert.subject_string();
        let path =
            chain::validate(cert, &intermediates, trust.roots(), issued).map_err(|source| {
                VerifyError::UntrustedApprover {
                    subject: subject.clone(),
                    source,
                }
            })?;
        for c in path.path() {
            check_validity(c, issued)?;
        }
        let view = path.chain_view();
        if !view
            .leaf
            .role
            .as_ref()
            .is_some_and(|r| r.kind == crate::grants::RoleKind::Approver)
        {
            return Err(VerifyError::NotAnApprover { subject });
        }
        // The role counts only if every intermediate above the approver may issue approvers.
        let role = crate::authz::delegated_role(&view).map_err(|(_, reason)| {
            VerifyError::RoleNotDelegated {
                subject: subject.clone(),
                reason,
            }
        })?;
        if !role.groups.contains(group) {
            return Err(VerifyError::WrongApprovalGroup {
                subject,
                group: group.clone(),
            });
        }
        let key = spki_der(cert)?;
        // Names compared as the broker compares them (`cert::same_name`).
        if approval.x5t_s256 == claims.cnf.x5t_s256
            || crate::cert::same_name(&subject, &claims.sub)
            || agent_key.as_ref() == Some(&key)
        {
            return Err(VerifyError::SelfApproval { subject });
        }
        if seen.iter().any(|(x5t, s, k)| {
            *x5t == approval.x5t_s256 || crate::cert::same_name(s, &subject) || *k == key
        }) {
            return Err(VerifyError::DuplicateApprover { subject });
        }
        let signature = jws::strict_b64("approval signature", &approval.sig).map_err(|_| {
            VerifyError::BadApprovalSignature {
                subject: subject.clone(),
            }
        })?;
        let verified = chain::CertKey::of(cert)
            .is_ok_and(|k| crate::approval::verify(&k, &message, &signature));
        if !verified {
            return Err(VerifyError::BadApprovalSignature { subject });
        }
        seen.push((approval.x5t_s256.clone(), subject, key));
        valid += 1;
    }
    let required = rule.map_or(detail.approvals, |(r, _)| r.max(detail.approvals));
    if valid < required {
        return Err(VerifyError::ApprovalQuorumNotMet { required, valid });
    }
    Ok(())
}

/// The approval rule (required, group) of the agent's grant that allows the token's request,
/// when the agent presented its certificate; `None` otherwise, or when that grant has no rule.
fn grant_rule(
    claims: &Claims,
    expect: &Expectations,
) -> Result<Option<(u32, String)>, VerifyError> {
    let (Binding::Agent(agent), serde_json::Value::Object(params), Some(detail)) = (
        &expect.binding,
        expect.action.params.value(),
        claims.authorization_details.first(),
    ) else {
        return Ok(None);
    };
    let Some(Ok(grants)) = agent
        .extension(SEB_GRANTS_OID)
        .map(|e| crate::grants::GrantSet::from_der(e.extn_value.as_bytes()))
    else {
        return Ok(None);
    };
    // The grant the broker's decision uses (`authz::deciding_grant`): a token for an action
    // the agent's grants refuse was not issued by a broker that follows them.
    let (_, _, rule) =
        crate::authz::deciding_grant(&grants, &detail.operation, &detail.resource, params)
            .map_err(|(code, reason)| VerifyError::InvalidAuthorizationDetails {
                reason: format!("the agent's grants refuse this action ({code}): {reason}"),
            })?;
    Ok(rule.map(|rule| (rule.required, rule.group)))
}

/// A certificate's SubjectPublicKeyInfo DER, its point uncompressed (the same key under two
/// certificates compares equal, however each spells the point).
fn spki_der(cert: &Certificate) -> Result<Vec<u8>, VerifyError> {
    cert.canonical_spki_der()
        .map_err(|e| VerifyError::InvalidClaims {
            reason: format!("cannot encode a certificate's public key: {e}"),
        })
}

fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), VerifyError> {
    if now < cert.not_before() {
        return Err(VerifyError::CertificateNotYetValid {
            subject: cert.subject_string(),
            now: unix(now),
            not_before: unix(cert.not_before()),
        });
    }
    if now > cert.not_after() {
        return Err(VerifyError::CertificateExpired {
            subject: cert.subject_string(),
            now: unix(now),
            not_after: unix(cert.not_after()),
        });
    }
    Ok(())
}

/// Whether `cert` says it is a CA (`basicConstraints cA`); an unreadable extension says no.
fn is_ca(cert: &Certificate) -> bool {
    cert.standard_extension::<BasicConstraints>()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.ca)
}

#[cfg(test)]
mod tests;
