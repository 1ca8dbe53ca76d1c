//! base64url without padding (RFC 4648 §5), as JOSE uses it: tokens, thumbprints (`kid`,
//! `x5t#S256`), digests and attestation evidence. The one place seb encodes or decodes it.

use base64ct::{Base64UrlUnpadded, Encoding};

/// Encodes `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// Decodes `text`; `None` if it is not base64url without padding.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    Base64UrlUnpadded::decode_vec(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_padding_and_the_url_alphabet() {
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(decode("-_8="), None, "padding is refused");
        assert_eq!(decode("+/8"), None, "standard alphabet is refused");
    }
}
