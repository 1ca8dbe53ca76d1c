//! Canonical requests: RFC 8785 (JCS) canonical JSON and the SHA-384 digests that tokens and
//! approvals bind to.
//!
//! Two requests that mean the same JSON value get the same digest whatever their key order or
//! number spelling (`1.0` and `1`, `1e2` and `100`); two that differ never share one. For the
//! second half, integers outside ±(2^53-1) are refused rather than rounded to a double (two
//! different integers would otherwise collapse to one digest). Nesting is bounded.
//! This module must never panic or recurse without bound on input.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha384};

/// Deepest nesting of arrays and objects accepted in a value to canonicalise. In
/// [`request_digest`] the enclosing request object counts as the first level, so the params
/// object is level 2.
pub const MAX_DEPTH: usize = 32;

/// Largest integer magnitude a JSON number may have to be canonicalised exactly: 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a value has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("canonicalising JSON: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// An integer outside ±(2^53-1), which an IEEE double (and so JCS) cannot hold exactly.
    #[error("canonicalising JSON: integer {0} is outside the I-JSON safe range ±(2^53-1)")]
    UnsafeInteger(String),
    /// A number that is neither an integer nor a finite double.
    #[error("canonicalising JSON: number {0} is not a finite double")]
    NotFinite(String),
}

/// The RFC 8785 canonical serialisation of `value`.
pub fn canonicalize(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_value(&mut out, value, 0)?;
    Ok(out)
}

/// SHA-384 over the canonical JSON of `{"operation", "resource", "params"}`.
pub fn request_digest(
    operation: &str,
    resource: &str,
    params: &Value,
) -> Result<[u8; 48], CanonicalError> {
    let mut out = String::new();
    // Keys in JCS order: "operation" < "params" < "resource".
    out.push_str("{\"operation\":");
    write_string(&mut out, operation);
    out.push_str(",\"params\":");
    write_value(&mut out, params, 1)?;
    out.push_str(",\"resource\":");
    write_string(&mut out, resource);
    out.push('}');
    Ok(sha384(out.as_bytes()))
}

/// SHA-384 over the canonical JSON of the parameters alone (the token's `params_digest`).
pub fn params_digest(params: &Value) -> Result<[u8; 48], CanonicalError> {
    canonicalize(params).map(|c| sha384(c.as_bytes()))
}

fn sha384(bytes: &[u8]) -> [u8; 48] {
    Sha384::digest(bytes).into()
}

fn write_value(out: &mut String, value: &Value, depth: usize) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            let depth = enter(depth)?;
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let depth = enter(depth)?;
            write_object(out, map, depth)?;
        }
    }
    Ok(())
}

fn enter(depth: usize) -> Result<usize, CanonicalError> {
    if depth >= MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    Ok(depth + 1)
}

fn write_object(
    out: &mut String,
    map: &Map<String, Value>,
    depth: usize,
) -> Result<(), CanonicalError> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    // RFC 8785 §3.2.3: sort by the UTF-16 code units of the keys.
    entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value, depth)?;
    }
    out.push('}');
    Ok(())
}

/// RFC 8785 §3.2.2.2: only `"`, `\` and control characters are escaped; the short forms are
/// used where JSON has them, otherwise `\u00xx` in lower-case hex.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &Number) -> Result<(), CanonicalError> {
    if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(CanonicalError::UnsafeInteger(i.to_string()));
        }
        let _ = write!(out, "{i}");
        return Ok(());
    }
    if let Some(u) = n.as_u64() {
        // as_i64 failed, so u > i64::MAX: never safe.
        return Err(CanonicalError::UnsafeInteger(u.to_string()));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => {
            write_es_number(out, f);
            Ok(())
        }
        _ => Err(CanonicalError::NotFinite(n.to_string())),
    }
}

/// ECMAScript `Number::toString` (ECMA-262 §6.1.6.1.20) for a finite double, which is what
/// JCS prescribes. Rust's `{:e}` gives the shortest round-trip digits and the exponent; the
/// layout rules below are ECMAScript's.
pub fn write_es_number(out: &mut String, f: f64) {
    if f == 0.0 {
        // Covers -0 too.
        out.push('0');
        return;
    }
    if f < 0.0 {
        out.push('-');
    }
    let sci = format!("{:e}", f.abs());
    // `sci` is "d[.ddd]e[-]x"; Rust always writes both parts for a finite non-zero double.
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    // The value is 0.digits × 10^n.
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        for _ in 0..(n - k) {
            out.push('0');
        }
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n.unsigned_abs() as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        for _ in 0..(-n) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let e = n - 1;
        let _ = write!(
            out,
            "e{}{}",
            if e < 0 { '-' } else { '+' },
            e.unsigned_abs()
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn es(f: f64) -> String {
        let mut s = String::new();
        write_es_number(&mut s, f);
        s
    }

    fn canon(text: &str) -> String {
        canonicalize(&serde_json::from_str(text).unwrap()).unwrap()
    }

    #[test]
    fn es_numbers_known_answers() {
        // RFC 8785 §3.2.2.3 and Appendix B.
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1e30, "1e+30"),
            (4.50, "4.5"),
            (2e-3, "0.002"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (5e-324, "5e-324"),
            (-5e-324, "-5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-1.7976931348623157e308, "-1.7976931348623157e+308"),
            (9007199254740992.0, "9007199254740992"),
            (9007199254740994.0, "9007199254740994"),
            (295147905179352830000.0, "295147905179352830000"),
            (333333333.3333333, "333333333.3333333"),
            (0.1, "0.1"),
            (-1.5, "-1.5"),
            (1.2345e-7, "1.2345e-7"),
            (123.456, "123.456"),
        ];
        for (f, want) in cases {
            assert_eq!(es(*f), *want, "{f:e}");
        }
    }

    #[test]
    fn rfc8785_example_object() {
        let text = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            canon(text),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+20AC (0x20AC) sorts before U+1F600 (surrogates 0xD83D..), though UTF-8 agrees here;
        // U+FB33 (0xFB33) sorts after U+1F600 in UTF-16 but before it in UTF-8.
        let v = json!({"\u{fb33}": 1, "\u{1f600}": 2, "\u{20ac}": 3, "a": 4, "\r": 5, "1": 6});
        assert_eq!(
            canonicalize(&v).unwrap(),
            "{\"\\r\":5,\"1\":6,\"a\":4,\"\u{20ac}\":3,\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
    }

    #[test]
    fn a_bmp_key_above_the_surrogates_sorts_after_a_supplementary_key() {
        // U+E000 is one UTF-16 unit, 0xE000; U+1F600 is the pair 0xD83D 0xDE00, so it sorts
        // first. In UTF-8 (EE 80 80 against F0 9F 98 80), and so in serde_json's map, it is
        // the other way round: only a UTF-16 sort gives the canonical order.
        let v = json!({"\u{e000}": 1, "\u{1f600}": 2});
        let canonical = "{\"\u{1f600}\":2,\"\u{e000}\":1}";
        assert_eq!(canonicalize(&v).unwrap(), canonical);
        assert_ne!(
            serde_json::to_string(&v).unwrap(),
            canonical,
            "the input's own order is not already the canonical one"
        );
        // At every depth, and whatever order the text had.
        assert_eq!(
            canon("{\"a\": {\"\u{e000}\": 1, \"\u{1f600}\": 2}, \"\u{e000}\": [{\"\u{1f600}\": 0, \"\u{e000}\": 0}]}"),
            "{\"a\":{\"\u{1f600}\":2,\"\u{e000}\":1},\"\u{e000}\":[{\"\u{1f600}\":0,\"\u{e000}\":0}]}"
        );
    }

    #[test]
    fn rfc8785_property_sorting_example() {
        // RFC 8785 §3.2.3, input as printed there (the emoji as a surrogate pair escape).
        let text = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        // The RFC's expected order: Carriage Return, One, Control, Latin Small Letter O With
        // Diaeresis, Euro Sign, Emoji: Grinning Face, Hebrew Letter Dalet With Dagesh.
        assert_eq!(
            canon(text),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
             \"\u{1f600}\":\"Emoji: Grinning Face\",\
             \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        // SHA-384 of those canonical bytes, computed independently (Python's hashlib over the
        // expected string above).
        assert_eq!(
            hex::encode(params_digest(&serde_json::from_str(text).unwrap()).unwrap()),
            "a159e6d38b031e66e1c92149bdaf7c2d603390755f93a202ace85418210aa69f2c41fcae12714f06502535c6e44ef2ca"
        );
    }

    #[test]
    fn digests_follow_utf16_key_order() {
        // Known answers, computed independently (Python: keys sorted by their UTF-16BE bytes,
        // SHA-384 over the UTF-8 text): a digest over the UTF-8 order would differ.
        let params =
            json!({"outer": {"\u{e000}": 1, "\u{1f600}": 2}, "\u{e000}": true, "\u{1f600}": false});
        assert_eq!(
            canonicalize(&params).unwrap(),
            "{\"outer\":{\"\u{1f600}\":2,\"\u{e000}\":1},\"\u{1f600}\":false,\"\u{e000}\":true}"
        );
        assert_eq!(
            hex::encode(params_digest(&params).unwrap()),
            "82fc93c29ff0c24b2a6a0add64d444e314e2e72d255475617300a5ecfddd8be01b69e644f59ab14847e4ba5fe8d470b5"
        );
        assert_eq!(
            hex::encode(request_digest("deploy.x", "prod/x", &params).unwrap()),
            "32c19abfbd034cb8d9534c89422cf87f77a1a2c6be2203825a761f37219b103ddd1fbcb48ad5bde4942776acd4aa9dc0"
        );
        let utf8_order =
            "{\"outer\":{\"\u{e000}\":1,\"\u{1f600}\":2},\"\u{e000}\":true,\"\u{1f600}\":false}";
        assert_ne!(
            params_digest(&params).unwrap(),
            <[u8; 48]>::from(Sha384::digest(utf8_order.as_bytes()))
        );
    }

    #[test]
    fn control_characters_escape_lowercase() {
        assert_eq!(
            canonicalize(&json!("\u{1}\u{1f}\u{8}\u{c}\t\u{7f}")).unwrap(),
            "\"\\u0001\\u001f\\b\\f\\t\u{7f}\""
        );
    }

    #[test]
    fn number_spellings_normalise() {
        assert_eq!(
            canon("[1.0, 1e2, 100, -0.0, 1E-7, 10.50]"),
            "[1,100,100,0,1e-7,10.5]"
        );
    }

    #[test]
    fn unsafe_integers_refused() {
        assert!(canon("[9007199254740991, -9007199254740991]").contains("9007199254740991"));
        for text in [
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551615",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert!(
                matches!(canonicalize(&v), Err(CanonicalError::UnsafeInteger(_))),
                "{text}"
            );
        }
        // Beyond u64, serde_json already holds a double: canonicalised as ECMAScript would.
        // (`json::parse_strict`, which every request and verifier reads with, refuses such an
        // integer literal before it gets here.)
        assert_eq!(canon("18446744073709551616"), "18446744073709552000");
        // Beyond the double range, serde_json refuses to parse at all.
        assert!(serde_json::from_str::<Value>("1e400").is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let mut v = json!(1);
        for _ in 0..MAX_DEPTH {
            v = json!([v]);
        }
        assert!(canonicalize(&v).is_ok());
        v = json!({ "a": v });
        assert_eq!(canonicalize(&v), Err(CanonicalError::TooDeep));
        // request_digest puts params one level down.
        let mut p = json!(1);
        for _ in 0..MAX_DEPTH {
            p = json!([p]);
        }
        assert!(request_digest("a", "b", &p).is_err());
    }

    #[test]
    fn request_digest_matches_canonical_wrapper() {
        let params = json!({"b": [1.0, "x"], "a": {"z": true, "y": null}});
        let wrapper = json!({"resource": "prod/x", "params": params, "operation": "deploy.x"});
        let want: [u8; 48] = Sha384::digest(canonicalize(&wrapper).unwrap().as_bytes()).into();
        assert_eq!(request_digest("deploy.x", "prod/x", &params).unwrap(), want);
        assert_ne!(
            request_digest("deploy.x", "prod/y", &params).unwrap(),
            want,
            "resource is bound"
        );
        assert_eq!(
            params_digest(&params).unwrap(),
            <[u8; 48]>::from(Sha384::digest(canonicalize(&params).unwrap().as_bytes()))
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1000i64..1000).prop_map(|i| json!(i)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-z\u{e9}\u{1f600}\"\\\\\n]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z\u{20ac}\u{1f600}]{0,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Serialises with reversed key order and numbers re-spelled (integers as `N.0`, doubles
    /// in exponent form), as another JSON producer might.
    fn respell(v: &Value) -> String {
        match v {
            Value::Number(n) if n.is_i64() => format!("{}.0", n),
            Value::Number(n) => format!("{:e}", n.as_f64().unwrap()),
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(respell).collect();
                format!("[ {} ]", parts.join(" , "))
            }
            Value::Object(map) => {
                let parts: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{} : {}", serde_json::to_string(k).unwrap(), respell(v)))
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            }
            other => serde_json::to_string(other).unwrap(),
        }
    }

    proptest! {
        #[test]
        fn digest_ignores_key_order_and_number_spelling(v in arb_json()) {
            let respelled: Value = serde_json::from_str(&respell(&v)).unwrap();
            prop_assert_eq!(canonicalize(&v).unwrap(), canonicalize(&respelled).unwrap());
            prop_assert_eq!(params_digest(&v).unwrap(), params_digest(&respelled).unwrap());
        }

        #[test]
        fn canonical_form_is_a_fixed_point(v in arb_json()) {
            let c = canonicalize(&v).unwrap();
            let back: Value = serde_json::from_str(&c).unwrap();
            prop_assert_eq!(canonicalize(&back).unwrap(), c);
        }

        #[test]
        fn es_numbers_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let s = es(f);
            let back: f64 = s.parse().unwrap();
            prop_assert!(back == f || (f == 0.0 && back == 0.0));
        }
    }
}
