//! Whether two subject names are one person's, for the checks where one person must not count
//! twice (an approver, or the requester approving itself), by the broker and by the offline
//! verifiers alike.
//!
//! Names arrive as RFC 4514 strings ([`super::Certificate::subject_string`], and the token's
//! `sub`), so they are compared in that form, after undoing what differs between encodings of
//! one name:
//! * the order of attributes (`openssl req -subj "/CN=a/O=b"` and `seb keygen --subject
//!   "CN=a,O=b"` put them in opposite orders) and how they are grouped into RDNs;
//! * attribute types written by name or by OID (`CN` or `2.5.4.3`);
//! * values written as text or as `#` and the hex of their DER: a BMPString, UniversalString
//!   or VisibleString value, or any value of a type the formatter has no name for, is written
//!   as hex, and is decoded here;
//! * escapes (`\,`, `\ `, `\0a`);
//! * case, and spaces at either end of a value or repeated inside one (a simplification of
//!   RFC 4518's preparation for matching).
//!
//! Matching more names is the safe direction here: a false match refuses an approval, a missed
//! one lets a person count twice.

/// Whether the subjects `a` and `b` (RFC 4514 strings) name the same entity, as this module
/// compares names. `CN=Alice,O=example`, `O=example,CN=alice ` and `2.5.4.3=#1e0a0041006c00690063
/// 0065,O=example` are one name.
pub fn same_name(a: &str, b: &str) -> bool {
    a == b || name_key(a) == name_key(b)
}

/// The comparison form: every attribute as (type OID or lower-case name, prepared value),
/// sorted.
fn name_key(name: &str) -> Vec<(String, String)> {
    let mut key: Vec<(String, String)> = attributes(name)
        .into_iter()
        .map(|(kind, value)| (attribute_type(&kind), prepared(&value)))
        .collect();
    key.sort();
    key
}

/// The (type, value) pairs of an RFC 4514 string, values unescaped or decoded from `#hex`.
/// Separators (`,` between RDNs, `+` inside one) are not told apart: grouping is ignored.
fn attributes(name: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = name.chars().peekable();
    loop {
        let mut kind = String::new();
        let mut raw = Vec::new();
        let mut hex_form = false;
        let mut in_value = false;
        let mut first_of_value = true;
        let mut ended = true;
        while let Some(c) = chars.next() {
            if !in_value {
                if c == '=' {
                    in_value = true;
                } else if c == ',' || c == '+' {
                    ended = false;
                    break;
                } else {
                    kind.push(c);
                }
                continue;
            }
            if first_of_value && c == '#' {
                hex_form = true;
            }
            first_of_value = false;
            match c {
                '\\' => {
                    let hex: String = chars.clone().take(2).collect();
                    match hex_byte(&hex) {
                        Some(byte) => {
                            raw.push(byte);
                            chars.next();
                            chars.next();
                        }
                        None => {
                            if let Some(escaped) = chars.next() {
                                let mut buf = [0u8; 4];
                                raw.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                }
                ',' | '+' => {
                    ended = false;
                    break;
                }
                _ => {
                    let mut buf = [0u8; 4];
                    raw.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let value = if hex_form {
            decode_der_string(&text[1..]).unwrap_or_else(|| text.to_ascii_lowercase())
        } else {
            text
        };
        if !kind.trim().is_empty() || !value.is_empty() {
            out.push((kind, value));
        }
        if ended {
            return out;
        }
    }
}

/// Two hexadecimal digits as a byte; anything else (`+1`, which `from_str_radix` takes) is
/// not one.
fn hex_byte(pair: &str) -> Option<u8> {
    let digits = pair.as_bytes();
    (digits.len() == 2 && digits.iter().all(u8::is_ascii_hexdigit))
        .then(|| u8::from_str_radix(pair, 16).ok())
        .flatten()
}

/// The text of a DER string value given as hex (`0c05616c696365`): the string types a
/// certificate subject uses. `None` for anything else, which is then compared as hex.
fn decode_der_string(hex: &str) -> Option<String> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| hex_byte(hex.get(i..i + 2)?))
        .collect::<Option<_>>()?;
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let content = match first {
        0..=0x7f => rest.get(..usize::from(first))?,
        0x81 => rest.get(1..1 + usize::from(*rest.first()?))?,
        0x82 => {
            let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            rest.get(2..2 + len)?
        }
        _ => return None,
    };
    string_text(tag, content)
}

/// The text of a string value of DER type `tag` with contents `content`: UTF8String,
/// NumericString, PrintableString, IA5String, VisibleString (UTF-8), TeletexString (read as
/// Latin-1, as common software does), BMPString (UTF-16) and UniversalString (UTF-32). `None`
/// for another type or contents that are not text.
pub(crate) fn string_text(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x12 | 0x13 | 0x16 | 0x1a => String::from_utf8(content.to_vec()).ok(),
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        0x1e if content.len().is_multiple_of(2) => {
            let units: Vec<u16> = content
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        0x1c if content.len().is_multiple_of(4) => content
            .chunks_exact(4)
            .map(|q| char::from_u32(u32::from_be_bytes([q[0], q[1], q[2], q[3]])))
            .collect(),
        _ => None,
    }
}

/// An attribute type as an OID in dotted form when it is one of [`ATTRIBUTE_TYPES`]' names
/// (any case) or an OID, else lower-cased as written.
fn attribute_type(kind: &str) -> String {
    let kind = kind.trim().to_ascii_lowercase();
    let kind = kind.strip_prefix("oid.").unwrap_or(&kind);
    ATTRIBUTE_TYPES
        .iter()
        .find(|(_, names)| names.contains(&kind))
        .map_or_else(|| kind.to_owned(), |(oid, _)| (*oid).to_owned())
}

/// Attribute types by OID and the names RFC 4514 strings give them: for the attributes
/// subjects use, the names the formatters of x509-cert (the broker's), Python's cryptography
/// and Go's crypto/x509 write, and their RFC 4519 long forms. Others are compared by OID or
/// as written. The Python client and the Go example carry the same table.
const ATTRIBUTE_TYPES: &[(&str, &[&str])] = &[
    ("2.5.4.3", &["cn", "commonname"]),
    ("2.5.4.4", &["sn", "surname"]),
    ("2.5.4.5", &["serialnumber"]),
    ("2.5.4.6", &["c", "countryname"]),
    ("2.5.4.7", &["l", "localityname"]),
    ("2.5.4.8", &["st", "s", "stateorprovincename"]),
    ("2.5.4.9", &["street", "streetaddress"]),
    ("2.5.4.10", &["o", "organizationname"]),
    ("2.5.4.11", &["ou", "organizationalunitname"]),
    ("2.5.4.12", &["title"]),
    ("2.5.4.13", &["description"]),
    ("2.5.4.15", &["businesscategory"]),
    ("2.5.4.16", &["postaladdress"]),
    ("2.5.4.17", &["postalcode"]),
    ("2.5.4.18", &["postofficebox"]),
    ("2.5.4.20", &["telephonenumber"]),
    ("2.5.4.41", &["name"]),
    ("2.5.4.42", &["givenname", "gn"]),
    ("2.5.4.43", &["initials"]),
    ("2.5.4.44", &["generationqualifier"]),
    ("2.5.4.45", &["x500uniqueidentifier"]),
    ("2.5.4.46", &["dnqualifier"]),
    ("2.5.4.51", &["houseidentifier"]),
    ("2.5.4.54", &["dmdname"]),
    ("2.5.4.65", &["pseudonym"]),
    ("2.5.4.72", &["role", "id-at-role"]),
    ("0.9.2342.19200300.100.1.1", &["uid", "userid"]),
    ("0.9.2342.19200300.100.1.25", &["dc", "domaincomponent"]),
    (
        "1.2.840.113549.1.9.1",
        &["emailaddress", "email", "pkcs-9-at-emailaddress"],
    ),
];

/// A value prepared for matching: lower case, whitespace at either end dropped and runs of it
/// inside collapsed to one space.
fn prepared(value: &str) -> String {
    value
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_the_shared_known_answers_say() {
        // The same cases the Python client's and the Go executor's verifiers are tested with.
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../tests/data/same_names.json")).unwrap();
        assert!(cases.len() > 20);
        for case in cases {
            let (a, b) = (case["a"].as_str().unwrap(), case["b"].as_str().unwrap());
            let same = case["same"].as_bool().unwrap();
            assert_eq!(same_name(a, b), same, "{}: {a} / {b}", case["why"]);
            assert_eq!(same_name(b, a), same, "{}: {b} / {a}", case["why"]);
        }
    }

    #[test]
    fn malformed_names_do_not_panic() {
        // Malformed strings do not panic.
        for odd in [
            "",
            "=",
            ",,",
            "CN",
            "CN=\\",
            "CN=#",
            "CN=#1e01",
            "CN=#0c7f61",
            "+=+",
        ] {
            let _ = same_name(odd, "CN=a");
        }
    }
}
