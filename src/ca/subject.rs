//! Subject names: parsing RFC 4514 subjects, reading a common name, and the bounds a name about
//! to be given out must keep (RFC 5280's upper bounds, one common name, no control or
//! formatting characters).

use std::str::FromStr;

use x509_cert::name::Name;

use super::CaError;

/// id-at-commonName.
pub(super) const COMMON_NAME: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// Parses an RFC 4514 subject such as `CN=deploy-bot,O=example`. It must have a CN.
pub fn parse_subject(subject: &str) -> Result<Name, CaError> {
    let err = |reason: &str| CaError::Subject {
        subject: subject.to_owned(),
        reason: reason.to_owned(),
    };
    if !subject.contains('=') {
        return Err(err(&format!(
            "write it as an RFC 4514 name, for example \"CN={subject},O=example\""
        )));
    }
    let name = Name::from_str(subject).map_err(|e| err(&e.to_string()))?;
    let has_cn = name.iter().any(|atv| atv.oid == COMMON_NAME);
    if !has_cn {
        return Err(err("a common name (CN=...) is required"));
    }
    Ok(name)
}

/// [`parse_subject`] for a name about to be given out (`seb keygen`, `init`, `issue-ca`): also
/// within RFC 5280's bounds ([`attribute_problem`]). Names already issued (renewals, rotations
/// of an existing deployment) are not held to it.
pub fn parse_new_subject(subject: &str) -> Result<Name, CaError> {
    let name = parse_subject(subject)?;
    match attribute_problem(&name) {
        Some(problem) => Err(CaError::Subject {
            subject: subject.to_owned(),
            reason: problem,
        }),
        None => Ok(name),
    }
}

/// countryName (2.5.4.6).
const COUNTRY_NAME: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.4.6");

/// Most attributes a new subject may have.
const MAX_ATTRIBUTES: usize = 16;

/// The text of `name`'s common name, when it has exactly one that reads as text.
pub fn common_name(name: &Name) -> Option<String> {
    let mut names = name.iter().filter(|atv| atv.oid == COMMON_NAME);
    let cn = names.next()?;
    if names.next().is_some() {
        return None;
    }
    attribute_text(&cn.value)
}

/// A subject that should not be given out: an attribute outside RFC 5280's upper bounds, which
/// other tools refuse or warn about (Python's cryptography: a common name of 1 to 64
/// characters, a two-letter country); more than one common name (tools disagree on which one
/// they show); more than [`MAX_ATTRIBUTES`] attributes; or a control or formatting character
/// ([`crate::text::hides_text`], line feeds and tabs included), which could make the name an
/// approver or auditor reads (`seb pending`, audit entries, the token's `sub`) look like
/// another.
pub fn attribute_problem(name: &Name) -> Option<String> {
    let attributes: Vec<_> = name.iter().collect();
    if attributes.len() > MAX_ATTRIBUTES {
        return Some(format!("more than {MAX_ATTRIBUTES} attributes"));
    }
    if attributes
        .iter()
        .filter(|atv| atv.oid == COMMON_NAME)
        .count()
        > 1
    {
        return Some("more than one common name (CN)".into());
    }
    if let Some(c) = hidden_character(name) {
        return Some(format!(
            "an attribute contains the control or formatting character U+{:04X}",
            u32::from(c)
        ));
    }
    if let Some(problem) = attributes.iter().find_map(|atv| alphabet_problem(atv)) {
        return Some(problem);
    }
    for atv in attributes {
        let Some(text) = attribute_text(&atv.value) else {
            continue;
        };
        let chars = text.chars().count();
        if atv.oid == COMMON_NAME && !(1..=64).contains(&chars) {
            return Some("the common name (CN) must be 1 to 64 characters (RFC 5280)".into());
        }
        if atv.oid == COUNTRY_NAME && chars != 2 {
            return Some(
                "the country (C) must be a two-letter code such as C=DE (RFC 5280)".into(),
            );
        }
    }
    None
}

/// A value holding a character its string type does not allow: PrintableString (what
/// `C=` and `serialNumber=` are written as), IA5String (`DC=`, `emailAddress=`),
/// NumericString, VisibleString. openssl accepts such a certificate; Go's crypto/x509 and
/// Python's cryptography refuse to parse it at all, and with it every certificate it issues.
fn alphabet_problem(atv: &x509_cert::attr::AttributeTypeAndValue) -> Option<String> {
    let printable = |c: char| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c);
    let (kind, allowed, alphabet): (_, &dyn Fn(char) -> bool, _) =
        match der::Tagged::tag(&atv.value) {
            der::Tag::PrintableString => (
                "PrintableString",
                &printable,
                "A-Z, a-z, 0-9, space and ' ( ) + , - . / : = ?",
            ),
            der::Tag::Ia5String => ("IA5String", &|c: char| c.is_ascii(), "ASCII"),
            der::Tag::NumericString => (
                "NumericString",
                &|c: char| c.is_ascii_digit() || c == ' ',
                "digits and space",
            ),
            der::Tag::VisibleString => (
                "VisibleString",
                &|c: char| c.is_ascii_graphic() || c == ' ',
                "printable ASCII",
            ),
            _ => return None,
        };
    let text = String::from_utf8_lossy(atv.value.value());
    let bad = text.chars().find(|&c| !allowed(c))?;
    let name = der::oid::db::DB
        .by_oid(&atv.oid)
        .map_or_else(|| atv.oid.to_string(), str::to_owned);
    Some(format!(
        "the {name} value holds {bad:?}, which its string type ({kind}) cannot hold \
         (only {alphabet}); Go and Python's cryptography refuse such a certificate"
    ))
}

/// The first control or formatting character ([`crate::text::hides_text`], line feeds and tabs
/// included) in an attribute of `name` that reads as text: what would let the name, shown to an
/// approver or an auditor, look like another. `seb cert issue` never writes one; a certificate
/// an offline intermediate signed might hold one, and the broker refuses it.
pub fn hidden_character(name: &Name) -> Option<char> {
    let hidden = |text: &str| {
        text.chars()
            .find(|&c| c.is_control() || crate::text::hides_text(c))
    };
    name.iter().find_map(|atv| {
        // A TeletexString is read as Latin-1 here and as UTF-8 by other software (Go's
        // crypto/x509, Python's cryptography): a character hidden in either reading counts.
        let utf8 = (der::Tagged::tag(&atv.value) == der::Tag::TeletexString)
            .then(|| std::str::from_utf8(atv.value.value()).ok())
            .flatten()
            .and_then(hidden);
        utf8.or_else(|| attribute_text(&atv.value).as_deref().and_then(hidden))
    })
}

/// The text of a directory string, whatever its string type ([`crate::cert::string_text`], as
/// names are compared); `None` for another type or bytes that do not decode.
fn attribute_text(value: &der::Any) -> Option<String> {
    let tag = der::Encode::to_der(&der::Tagged::tag(value)).ok()?;
    crate::cert::string_text(*tag.first()?, value.value())
}
