//! Strict JSON, for every JSON value whose meaning must not depend on the parser: the broker's
//! request bodies and the parameters an executor checks a token against. Duplicate object keys
//! are refused (two parsers must never disagree about which value was granted: serde_json keeps
//! the last, other parsers the first), nesting is bounded, and every number must lie within
//! ±(2^53−1) however it is written (RFC 7493 §2.2). An integer beyond 64 bits would otherwise
//! reach serde_json as a rounded double: `18446744073709551616` and `18446744073709551617`
//! would be one value (and one digest) here and two values to a parser with big integers
//! (Python's), so an executor could act on a number nobody approved. A double that large is
//! whole, and its canonical form (`1e16` is `10000000000000000`) reads back as an integer no
//! strict reader takes, so it is refused too.
//!
//! Pure and without I/O, so the offline verifier (`--no-default-features`) uses the same parser
//! as the broker. It must never accept a document another JSON parser could read differently.

use std::cell::Cell;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::{Map, Value};

/// Deepest nesting accepted (matches the canonicaliser's bound).
pub const MAX_DEPTH: usize = crate::canonical::MAX_DEPTH;

/// Why a document is not strict JSON.
#[derive(Debug, thiserror::Error)]
pub enum StrictJsonError {
    /// Not JSON, or JSON another parser could read differently (a duplicate key, deep nesting,
    /// a number beyond the double range, trailing data).
    #[error("{0}")]
    Syntax(#[from] serde_json::Error),
    /// A number outside ±(2^53−1) (RFC 7493 §2.2), or one a double does not hold as written
    /// (`1e-400`, `1.00000000000000000000000001`): well-formed JSON, but not a value every
    /// parser holds the same way. The message says which.
    #[error("{0}")]
    UnsafeNumber(String),
}

/// Parses `bytes` as one JSON value, refusing duplicate keys, deep nesting and numbers
/// outside ±(2^53−1): what a request, or parameters an executor checks, must be.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let unsafe_number = Cell::new(None);
    let value =
        parse(bytes, Some(&unsafe_number), MAX_DEPTH).map_err(|e| match unsafe_number.take() {
            Some(number) => StrictJsonError::UnsafeNumber(format!(
                "number {number} is outside the I-JSON safe range ±(2^53-1)"
            )),
            None => e,
        })?;
    match inexact_number(bytes) {
        Some((literal, read)) => Err(StrictJsonError::UnsafeNumber(format!(
            "number {literal} is not held exactly by a double (it reads as {read}); a parser \
             of exact decimals would read another number than the one signed: send it as a \
             string, or as the number it reads as"
        ))),
        None => Ok(value),
    }
}

/// The first number of `bytes` (a document the parser took) written with a fraction or an
/// exponent whose decimal value is not that of the shortest decimal naming the double it
/// rounds to, with that double: `1e-400` (0), `1.00000000000000000000000001` (1),
/// `0.30000000000000001` (0.3). Such a number and the one it rounds to would be one value, and
/// one digest, here and in every double-based reader, and two numbers to a reader of exact
/// decimals (Python's `Decimal`, Go's `json.Number`, Java's `BigDecimal`). Trailing zeros and
/// the exponent's spelling (`2.50`, `25e-1`) change no value and pass.
fn inexact_number(bytes: &[u8]) -> Option<(String, f64)> {
    let mut at = 0;
    let mut in_string = false;
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        if in_string {
            match byte {
                b'\\' => at += 1,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if byte == b'"' {
            in_string = true;
        } else if byte == b'-' || byte.is_ascii_digit() {
            let start = at - 1;
            while bytes
                .get(at)
                .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            {
                at += 1;
            }
            let literal = std::str::from_utf8(&bytes[start..at]).ok()?;
            if literal.contains(['.', 'e', 'E']) {
                let read: f64 = literal.parse().ok()?;
                if decimal(literal) != decimal(&format!("{read:e}")) {
                    return Some((literal.to_owned(), read));
                }
            }
        }
    }
    None
}

/// The value of a decimal number as (negative, its significant digits without leading or
/// trailing zeros, the power of ten of the last one); zero, whatever its sign, is
/// `(false, "", 0)`.
fn decimal(text: &str) -> (bool, String, i64) {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        // An exponent beyond i64 came from a literal serde_json read as 0 or refused.
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(i64::MAX / 2)),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = format!("{whole}{fraction}");
    let mut power = exponent.saturating_sub(fraction.len() as i64);
    while digits.ends_with('0') {
        digits.pop();
        power = power.saturating_add(1);
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return (false, String::new(), 0);
    }
    (negative, digits.to_owned(), power)
}

/// Parses `bytes` refusing duplicate keys and deep nesting only: for reading a broker's
/// answers, whose stored values this seb may not have written (a record kept by an older
/// one), where a number is shown, not acted on.
pub fn parse_unambiguous(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    parse(bytes, None, MAX_DEPTH)
}

/// `value` read as `T` where the document says an object: `value` itself, and the member at
/// each path of `objects` when it is present, must be JSON objects (serde alone fills a struct
/// from an array, by position). Errors speak of the document, never of this program's types.
pub fn object_as<T: serde::de::DeserializeOwned>(
    value: Value,
    objects: &[&[&str]],
) -> Result<T, String> {
    if !value.is_object() {
        return Err("expected a JSON object".into());
    }
    for path in objects {
        let member = path.iter().try_fold(&value, |at, name| at.get(name));
        if member.is_some_and(|m| !m.is_object()) {
            return Err(format!("`{}` must be a JSON object", path.join(".")));
        }
    }
    serde_json::from_value(value).map_err(|e| shape_message(&e))
}

/// A serde error about a document's shape in the document's terms: `struct Receipt` is "an
/// object", and positional element counts are left out.
pub fn shape_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        out.push_str("an object");
        rest = rest[at + "struct ".len()..]
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
        // ` with 13 elements`
        if let Some(after) = rest.strip_prefix(" with ") {
            let count = after.trim_start_matches(|c: char| c.is_ascii_digit());
            if count.len() < after.len() {
                if let Some(r) = count
                    .strip_prefix(" elements")
                    .or_else(|| count.strip_prefix(" element"))
                {
                    rest = r;
                }
            }
        }
    }
    out.push_str(rest);
    out
}

/// Like [`parse_unambiguous`], with nesting up to `max_depth`: for a message that wraps a
/// strict document a few levels down (an MCP tool call), where the document's own parser
/// applies its bound.
pub fn parse_unambiguous_within(bytes: &[u8], max_depth: usize) -> Result<Value, StrictJsonError> {
    parse(bytes, None, max_depth)
}

/// One pass of the parser; with `numbers`, a number beyond ±(2^53−1) stops it and is left
/// there for the caller's error.
fn parse(
    bytes: &[u8],
    numbers: Option<&Cell<Option<String>>>,
    limit: usize,
) -> Result<Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed {
        depth: 0,
        limit,
        numbers,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    depth: usize,
    /// The deepest nesting taken.
    limit: usize,
    /// Where a number outside ±(2^53−1) is reported, when numbers are checked. serde_json
    /// hands every number over as an `i64`, a `u64` or (a fraction, an exponent, or an integer
    /// beyond 64 bits) an `f64`, so the three visitors below see each one whatever its
    /// spelling.
    numbers: Option<&'a Cell<Option<String>>>,
}

impl Seed<'_> {
    /// `value` if it may be taken: within ±(2^53−1), or numbers are not checked.
    fn number<E: de::Error>(self, magnitude: f64, shown: String, value: Value) -> Result<Value, E> {
        match self.numbers {
            Some(report) if magnitude > crate::canonical::MAX_SAFE_INTEGER as f64 => {
                let error = E::custom(format!(
                    "number {shown} is outside the I-JSON safe range ±(2^53-1)"
                ));
                report.set(Some(shown));
                Err(error)
            }
            _ => Ok(value),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        // Exact: 2^53−1 and every i64 convert to f64 on the right side of the bound.
        self.number(v.unsigned_abs() as f64, v.to_string(), Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.number(v as f64, v.to_string(), Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        let value = serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))?;
        self.number(v.abs(), v.to_string(), value)
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

impl<'a> Seed<'a> {
    fn nested<E: de::Error>(self) -> Result<Seed<'a>, E> {
        if self.depth >= self.limit {
            return Err(E::custom(format!("nesting deeper than {}", self.limit)));
        }
        Ok(Seed {
            depth: self.depth + 1,
            limit: self.limit,
            numbers: self.numbers,
        })
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        name: String,
    }

    #[test]
    fn objects_are_objects_and_errors_name_no_types() {
        use serde_json::json;
        let read = |v: Value| super::object_as::<Outer>(v, &[&["inner"]]);
        assert!(read(json!({"inner": {"a": 1}, "name": "x"})).is_ok());
        // What serde alone would take by position.
        assert_eq!(
            read(json!([{"a": 1}, "x"])).unwrap_err(),
            "expected a JSON object"
        );
        assert_eq!(
            read(json!({"inner": [1], "name": "x"})).unwrap_err(),
            "`inner` must be a JSON object"
        );
        for wrong in [
            json!({"inner": 1, "name": "x"}),
            json!({"inner": {"a": "1"}, "name": "x"}),
            json!({"inner": {"a": 1}}),
        ] {
            let e = super::object_as::<Outer>(wrong.clone(), &[]).unwrap_err();
            assert!(!e.contains("Outer") && !e.contains("Inner"), "{wrong}: {e}");
        }
        let e = super::object_as::<Outer>(json!({"inner": [], "name": "x"}), &[]).unwrap_err();
        assert!(
            e.contains("expected an object") && !e.contains("element"),
            "{e}"
        );
    }

    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        let v = parse_strict(br#"{"a":[1,2.5,"x",true,null],"b":{"c":-3}}"#).unwrap();
        assert_eq!(v["b"]["c"], -3);
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_strict(br#"{"p":{"replicas":1,"replicas":99}}"#).is_err());
    }

    #[test]
    fn refuses_deep_nesting_and_trailing_garbage() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse_strict(deep.as_bytes()).is_err());
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_strict(ok.as_bytes()).is_ok());
        assert!(parse_strict(br#"{"a":1} x"#).is_err());
        assert!(parse_strict(b"").is_err());
        assert!(parse_strict(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn numbers_beyond_the_safe_range_are_refused_however_written() {
        for text in [
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551615",
            // Beyond 64 bits serde_json would round these to one double.
            "18446744073709551616",
            "18446744073709551617",
            "-99999999999999999999999999",
        ] {
            let doc = format!(r#"{{"p":{{"n":[1,{text}]}}}}"#);
            assert!(
                matches!(
                    parse_strict(doc.as_bytes()),
                    Err(StrictJsonError::UnsafeNumber(_))
                ),
                "{text}"
            );
        }
        // Written as doubles, the same: whole numbers whose canonical form reads back as an
        // integer beyond the range.
        for text in [
            "1e16",
            "-1E16",
            "9007199254740992.0",
            "1.5e300",
            "18446744073709551616.0",
        ] {
            let doc = format!(r#"{{"n":{text}}}"#);
            assert!(
                matches!(
                    parse_strict(doc.as_bytes()),
                    Err(StrictJsonError::UnsafeNumber(_))
                ),
                "{text}"
            );
            // A broker's answer holding one (a record an older seb kept) is still readable.
            assert!(parse_unambiguous(doc.as_bytes()).is_ok(), "{text}");
        }
        // Safe numbers and numbers inside strings pass.
        for text in [
            r#"9007199254740991"#,
            r#"-9007199254740991"#,
            r#"9007199254740991.0"#,
            r#"0"#,
            r#"-0"#,
            r#"1e15"#,
            r#"-2.5E-300"#,
            r#"0.1"#,
            r#""18446744073709551616""#,
            r#""a\"18446744073709551616""#,
            r#""\\" "#,
        ] {
            let doc = format!(r#"{{"n":{text}}}"#);
            assert!(parse_strict(doc.as_bytes()).is_ok(), "{text}");
        }
        assert!(parse_strict(br#"{"a\\":"\"","n":18446744073709551616}"#).is_err());
    }

    #[test]
    fn numbers_a_double_does_not_hold_as_written_are_refused() {
        // Each reads as the double of a shorter decimal: one digest for two numbers to a
        // reader of exact decimals.
        for text in [
            "1e-400",
            "-1e-400",
            "1.00000000000000000000000001",
            "0.30000000000000001",
            "123456789.123456789123",
            "2.4703282292062328e-324",
        ] {
            let doc = format!(r#"{{"p":{{"x":[1,"1e-400",{text}]}}}}"#);
            match parse_strict(doc.as_bytes()) {
                Err(StrictJsonError::UnsafeNumber(why)) => {
                    assert!(why.contains(text) && why.contains("string"), "{why}")
                }
                other => panic!("{text}: {other:?}"),
            }
            // A broker's answer holding one is still readable.
            assert!(parse_unambiguous(doc.as_bytes()).is_ok(), "{text}");
        }
        // The same value however written, and numbers the shortest decimal of their double.
        for text in [
            "0.1",
            "0.10",
            "1e-1",
            "10E-2",
            "2.5",
            "25e-1",
            "-0.0",
            "0e-999",
            "1.0",
            "5e-324",
            "0.30000000000000004",
            "123456789.12345679",
        ] {
            let doc = format!(r#"{{"n":{text},"s":"1e-400 \"1.000000000000000001"}}"#);
            assert!(parse_strict(doc.as_bytes()).is_ok(), "{text}");
        }
    }
}
