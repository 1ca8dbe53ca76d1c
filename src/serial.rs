//! Certificate serial numbers in one canonical form, everywhere: the CLI, the store, the
//! broker's revocation lookups, the CRL and the logs.
//!
//! A serial is a positive integer (RFC 5280 §4.1.2.2). DER encodes it in two's complement, so
//! a serial whose top bit is set carries a `00` sign byte (`00 80 a1 …`), which `openssl x509
//! -serial` does not print (`80A1…`) and `openssl x509 -text` sometimes does (`00:80:a1:…`).
//! Comparing raw bytes made a revocation typed from one spelling miss a certificate carrying
//! the other. Here a [`Serial`] is the integer itself:
//!
//! * **bytes**: the minimal big-endian magnitude, no leading `00` byte, 1 to 20 bytes;
//! * **text**: those bytes in upper-case hex, two digits a byte, no colons (`80A1B2…`,
//!   `0A`): exactly what `openssl x509 -noout -serial` prints, so a serial copied from either
//!   tool can be searched for in the other's output.
//!
//! [`Serial::parse`] accepts what people paste: upper or lower case, colons, any leading
//! zeros (an odd number too), an optional `0x`. [`Serial::of`] reads a certificate and
//! refuses zero and negative serials, which no conforming CA issues and which could not be
//! told apart from a positive serial with the same bytes.
//!
//! Pure, no I/O; compiles with `--no-default-features`.

use std::fmt;

use crate::cert::Certificate;

/// The most octets a serial's magnitude may have (RFC 5280: 20).
pub const MAX_SERIAL_LEN: usize = 20;

/// A certificate serial number: a positive integer as its minimal big-endian magnitude.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

/// Why a text or a certificate has no serial in seb's sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// The text is not hexadecimal (after removing colons and an optional `0x`).
    #[error("serial {0:?} is not hex (colons and a 0x prefix are allowed)")]
    NotHex(String),
    /// The serial is zero (or empty).
    #[error("a serial number must be a positive integer, not zero")]
    Zero,
    /// The certificate's serial is negative (DER two's complement with the top bit set).
    #[error("the serial number is negative")]
    Negative,
    /// More than [`MAX_SERIAL_LEN`] octets once leading zeros are removed.
    #[error("a serial number is at most {MAX_SERIAL_LEN} octets, this one has {0}")]
    TooLong(usize),
}

impl Serial {
    /// The serial of `cert`, from its DER INTEGER: a leading sign byte is dropped; zero and
    /// negative serials are refused.
    pub fn of(cert: &Certificate) -> Result<Self, SerialError> {
        Self::from_der_integer(cert.serial())
    }

    /// From the contents octets of a DER INTEGER (two's complement, big-endian). More than
    /// [`MAX_SERIAL_LEN`] octets is refused, sign byte included: RFC 5280 §4.1.2.2 bounds the
    /// encoded integer, a CRL can list no such serial, and `seb cert revoke` refuses it, so a
    /// certificate carrying one could be authorised but never revoked.
    pub fn from_der_integer(contents: &[u8]) -> Result<Self, SerialError> {
        if contents.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(SerialError::Negative);
        }
        if contents.len() > MAX_SERIAL_LEN {
            return Err(SerialError::TooLong(contents.len()));
        }
        Self::from_magnitude(contents)
    }

    /// From big-endian magnitude bytes, leading zeros allowed (a stored or typed serial).
    pub fn from_magnitude(bytes: &[u8]) -> Result<Self, SerialError> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let minimal = &bytes[start..];
        if minimal.is_empty() {
            return Err(SerialError::Zero);
        }
        if minimal.len() > MAX_SERIAL_LEN {
            return Err(SerialError::TooLong(minimal.len()));
        }
        Ok(Serial(minimal.to_vec()))
    }

    /// Parses a serial as people write it: hex in either case, with or without colons
    /// (`80:A1:B2`), any leading zeros (`0080a1b2`, `a`), an optional `0x`.
    pub fn parse(text: &str) -> Result<Self, SerialError> {
        let not_hex = || SerialError::NotHex(text.to_owned());
        let trimmed = text.trim();
        let body = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        let mut digits: String = body.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(not_hex());
        }
        if digits.len() % 2 == 1 {
            digits.insert(0, '0');
        }
        let bytes = hex::decode(&digits).map_err(|_| not_hex())?;
        Self::from_magnitude(&bytes)
    }

    /// The minimal big-endian magnitude (what the store keys on).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Upper-case hex, two digits a byte, no `00` sign byte: as `openssl x509 -serial` prints.
impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(&self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_one_serial_is_one_serial() {
        let canonical = Serial::parse("80a1b2c3").unwrap();
        assert_eq!(canonical.as_bytes(), [0x80, 0xa1, 0xb2, 0xc3]);
        assert_eq!(canonical.to_string(), "80A1B2C3");
        for spelling in [
            "80A1B2C3",       // openssl x509 -serial
            "80:a1:b2:c3",    // openssl x509 -text
            "00:80:A1:B2:C3", // with the DER sign byte
            "0080a1b2c3",     // leading zeros
            "000080a1b2c3",   // more of them
            "0x80a1b2c3",     // a 0x prefix
            "  80a1b2c3\n",   // pasted with whitespace around it
        ] {
            assert_eq!(Serial::parse(spelling).unwrap(), canonical, "{spelling:?}");
        }
        // Odd digit counts are leading zeros too.
        assert_eq!(Serial::parse("a").unwrap().to_string(), "0A");
        assert_eq!(Serial::parse("00a").unwrap().to_string(), "0A");
        assert_eq!(Serial::parse("1ff").unwrap().as_bytes(), [0x01, 0xff]);
    }

    #[test]
    fn der_integers_lose_only_their_sign_byte() {
        assert_eq!(
            Serial::from_der_integer(&[0x00, 0x80, 0x01]).unwrap(),
            Serial::parse("8001").unwrap()
        );
        assert_eq!(
            Serial::from_der_integer(&[0x7f, 0x01]).unwrap().to_string(),
            "7F01"
        );
        assert_eq!(
            Serial::from_der_integer(&[0x80, 0x01]),
            Err(SerialError::Negative)
        );
        assert_eq!(Serial::from_der_integer(&[0x00]), Err(SerialError::Zero));
        assert_eq!(Serial::from_der_integer(&[]), Err(SerialError::Zero));
    }

    #[test]
    fn what_is_not_a_serial_is_refused() {
        for bad in ["", "0x", ":", "xyz", "12 34", "-1", "1.5", "80a1g2"] {
            assert!(
                matches!(Serial::parse(bad), Err(SerialError::NotHex(_))),
                "{bad:?}"
            );
        }
        assert_eq!(Serial::parse("0"), Err(SerialError::Zero));
        assert_eq!(Serial::parse("00:00"), Err(SerialError::Zero));
        let twenty = "ff".repeat(20);
        assert!(Serial::parse(&twenty).is_ok());
        assert!(
            Serial::parse(&format!("00{twenty}")).is_ok(),
            "a sign byte is not a 21st octet"
        );
        assert_eq!(
            Serial::parse(&"01".repeat(21)),
            Err(SerialError::TooLong(21))
        );
        // In a certificate the sign byte counts: twenty octets with the top bit set are 21 as
        // a DER INTEGER, which no CRL can list.
        let signed = [&[0u8][..], &[0xff; 20][..]].concat();
        assert_eq!(
            Serial::from_der_integer(&signed),
            Err(SerialError::TooLong(21))
        );
        assert!(Serial::from_der_integer(&signed[1..]).is_err(), "negative");
        let nineteen = [&[0u8][..], &[0xff; 19][..]].concat();
        assert!(Serial::from_der_integer(&nineteen).is_ok());
    }

    #[test]
    fn certificates_seb_issues_have_their_serial_as_is() {
        let root = crate::testkit::Ca::root("root");
        let serial = Serial::of(&root.cert).unwrap();
        assert_eq!(serial.as_bytes(), root.cert.serial());
        assert_eq!(serial.to_string(), root.cert.serial_hex());
    }
}
