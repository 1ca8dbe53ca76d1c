//! subjectAltName: the IP addresses and DNS names a TLS certificate serves (checked against the
//! preferred name syntax before anything is generated for them), and the subject itself as the
//! alternative name of a leaf that serves none.

use der::asn1::{Ia5String, OctetString};
use der::Encode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;

use super::{seb_extension, CaError};
use crate::cert::Extension;

/// Checks that `names` can be written as subjectAltName entries (IP addresses, or DNS names
/// in the preferred name syntax), before anything is generated for them.
pub fn check_tls_names(names: &[String]) -> Result<(), CaError> {
    subject_alt_names(names).map(|_| ())
}

/// Why `name` is not a DNS name a client can match (RFC 5280 §4.2.1.6: the preferred name
/// syntax of RFC 1034 §3.5 as RFC 1123 relaxed it; a leftmost `*` label for a wildcard).
/// An all-numeric last label is refused too: no top-level domain is one, and it is how a
/// mistyped IP address (`10.0.0.256`, `1.2.3.4.5`) would otherwise become a DNS name.
fn dns_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if name.len() > 253 {
        return Some("longer than 253 characters");
    }
    if name.ends_with('.') {
        return Some("a trailing dot (write the name without it)");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if i == 0 && *label == "*" && labels.len() > 2 {
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return Some("every label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Some(
                "neither an IP address nor a DNS name (letters, digits, '-' and '.' only; \
                 IPv6 zones are not allowed)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label starts or ends with '-'");
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("neither an IP address nor a DNS name (its last label is all digits)");
    }
    None
}

/// A subjectAltName holding the subject itself (a directoryName), for leaf certificates that
/// serve no names: path validators that require every end-entity certificate to carry one
/// (Python `cryptography`'s client verifier, the CA/Browser profiles it follows) accept them,
/// and it names nothing the subject does not already name.
pub(super) fn subject_as_alt_name(subject: &Name) -> Result<Extension, CaError> {
    use x509_cert::ext::pkix::SubjectAltName;
    let san = SubjectAltName(vec![GeneralName::DirectoryName(subject.clone())]);
    seb_extension(
        <SubjectAltName as der::oid::AssociatedOid>::OID,
        san.to_der()?,
    )
}

pub(super) fn subject_alt_names(names: &[String]) -> Result<Extension, CaError> {
    use x509_cert::ext::pkix::SubjectAltName;
    let mut general = Vec::new();
    for name in names {
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            let bytes = match ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            general.push(GeneralName::IpAddress(OctetString::new(bytes)?));
        } else if let Some(reason) = dns_name_problem(name) {
            return Err(CaError::TlsName {
                name: name.clone(),
                reason,
            });
        } else {
            general.push(GeneralName::DnsName(Ia5String::new(name)?));
        }
    }
    let san = SubjectAltName(general);
    seb_extension(
        <SubjectAltName as der::oid::AssociatedOid>::OID,
        san.to_der()?,
    )
}
