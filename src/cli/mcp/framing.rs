//! The stdio framing in front of rmcp: every line the host sends is screened before the MCP
//! session sees it, so that input JSON-RPC 2.0 calls an error gets one.
//!
//! rmcp drops a line it cannot parse without a word (to avoid error storms between two
//! confused peers), answers some invalid requests without their `id`, and takes a `tools/call`
//! whose `params` are missing for an unknown method. A host waiting for its answer would wait
//! for ever. Here:
//! * a line that is not JSON gets `-32700` (parse error) with `id: null`;
//! * a batch (MCP has none), a non-object, a wrong `jsonrpc`, a non-string `method` or an `id`
//!   that is neither a string nor a number gets `-32600` (invalid request), with the `id` when
//!   one can be read;
//! * a key twice anywhere in the message, or an integer `id` past ±(2^63−1), gets `-32600`;
//! * a request whose `params` (or their `_meta`) are not an object gets `-32602` (invalid
//!   params), and so does a `tools/call` without `{name, arguments: {...}}`;
//! * a line longer than [`MAX_LINE`] is discarded to its end and answered `-32700`;
//!
//! and everything else goes to rmcp unchanged. Both answer streams reach stdout through one
//! writer, a whole line at a time.

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The longest line read from the host (rmcp's own cap).
pub const MAX_LINE: usize = 16 << 20;

/// What to do with one line from the host.
#[derive(Debug, PartialEq)]
pub enum Screened {
    /// Pass it to the MCP session.
    Forward,
    /// Answer it with this JSON-RPC error response instead.
    Answer(Value),
    /// Nothing to do (a blank line).
    Ignore,
}

/// A JSON-RPC 2.0 error response.
fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Screens one line (without its newline).
pub fn screen(line: &[u8]) -> Screened {
    let text = line.trim_ascii();
    if text.is_empty() {
        return Screened::Ignore;
    }
    let Ok(value) = serde_json::from_slice::<Value>(text) else {
        return Screened::Answer(error(Value::Null, -32700, "Parse error: not a JSON value"));
    };
    let message = match value {
        Value::Object(message) => message,
        Value::Array(_) => {
            return Screened::Answer(error(
                Value::Null,
                -32600,
                "Invalid request: batches are not supported",
            ))
        }
        _ => {
            return Screened::Answer(error(
                Value::Null,
                -32600,
                "Invalid request: not a JSON object",
            ))
        }
    };
    // A key twice: serde_json kept the last, and rmcp answers such a line without its id. The
    // id is echoed only when it is not itself one of the doubled keys. Nesting is bounded as
    // serde_json bounds it: the broker applies its own bound to the parameters.
    let doubled = seb::json::parse_unambiguous_within(text, SERDE_JSON_DEPTH).err();
    let id = message.get("id");
    // rmcp reads a string or a signed 64-bit integer; anything else it would answer without
    // the id. An unsigned one past that range is answered here, with the id echoed.
    let id_readable = match id {
        Some(Value::String(_)) => true,
        Some(Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    };
    let echo = if id_readable && ids_at_top(text) == 1 {
        id.cloned().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let invalid = |why: &str| Screened::Answer(error(echo.clone(), -32600, why));
    if let Some(e) = doubled {
        return invalid(&format!("Invalid request: {e}"));
    }
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("Invalid request: jsonrpc must be \"2.0\"");
    }
    if id.and_then(Value::as_number).is_some_and(|n| !n.is_i64()) && id_readable {
        return invalid("Invalid request: id must be an integer within ±(2^63-1) or a string");
    }
    let response = !message.contains_key("method")
        && (message.contains_key("result") || message.contains_key("error"));
    if response && !id_readable {
        // A response is never answered (JSON-RPC 2.0 §5), not even an ill-formed one, such
        // as the host's own parse error about something the server sent (`id: null`).
        return Screened::Ignore;
    }
    if id.is_some() && !id_readable {
        return invalid("Invalid request: id must be a string or an integer");
    }
    match message.get("method") {
        Some(Value::String(method)) => {
            // MCP's methods take an object (rmcp answers anything else without the id).
            let params = message.get("params");
            let params_ok = params.is_none_or(|p| p.is_object() || p.is_null())
                && params
                    .and_then(|p| p.get("_meta"))
                    .is_none_or(|m| m.is_object() || m.is_null());
            if id.is_some() && !params_ok && method != "tools/call" {
                return Screened::Answer(error(
                    echo,
                    -32602,
                    "Invalid params: params must be an object, and its _meta an object",
                ));
            }
            if method == "tools/call" && id.is_some() && !(params_ok && is_tool_call(&message)) {
                return Screened::Answer(error(
                    echo,
                    -32602,
                    "Invalid params: tools/call takes {\"name\": string, \"arguments\": object}",
                ));
            }
            Screened::Forward
        }
        Some(_) => invalid("Invalid request: method must be a string"),
        // A response to a request of the server's.
        None if response => Screened::Forward,
        None => invalid("Invalid request: no method"),
    }
}

/// serde_json's own recursion limit: a line nested deeper is not JSON to it (`-32700`).
const SERDE_JSON_DEPTH: usize = 128;

/// How many times the top-level object of `text` names `id` (serde_json keeps the last of
/// duplicates, so the parsed message cannot tell).
fn ids_at_top(text: &[u8]) -> usize {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = usize;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut ids = 0;
            while let Some(key) = map.next_key::<String>()? {
                ids += usize::from(key == "id");
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(ids)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    serde::Deserializer::deserialize_map(&mut de, Keys).unwrap_or(0)
}

fn is_tool_call(message: &Map<String, Value>) -> bool {
    let Some(Value::Object(params)) = message.get("params") else {
        return false;
    };
    params.get("name").is_some_and(Value::is_string)
        && params
            .get("arguments")
            .is_none_or(|a| a.is_object() || a.is_null())
}

/// The next line of `reader` into `line` (its newline included): `None` at the end of input,
/// `Some(false)` for a line longer than `cap`, read to its end and dropped.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((too_long || !line.is_empty()).then_some(!too_long));
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buf.len(), false),
        };
        if !too_long && line.len() + take <= cap {
            line.extend_from_slice(&buf[..take]);
        } else {
            too_long = true;
            line.clear();
        }
        reader.consume(take);
        if done {
            return Ok(Some(!too_long));
        }
    }
}

/// Reads the host's lines from `input`: forwards the ones for the session to `session`
/// (closed at the end of input, which ends the session) and sends the answers to the others
/// to `out`.
pub async fn screen_input<R, W>(
    mut input: R,
    mut session: W,
    out: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    while let Some(fits) = next_line(&mut input, &mut line, MAX_LINE).await? {
        let screened = if fits {
            screen(&line)
        } else {
            Screened::Answer(error(
                Value::Null,
                -32700,
                "Parse error: the message is longer than 16 MiB",
            ))
        };
        match screened {
            Screened::Ignore => {}
            Screened::Forward => {
                session.write_all(&line).await?;
                if !line.ends_with(b"\n") {
                    session.write_all(b"\n").await?;
                }
                session.flush().await?;
            }
            Screened::Answer(answer) => {
                let mut text = answer.to_string().into_bytes();
                text.push(b'\n');
                if out.send(text).await.is_err() {
                    break;
                }
            }
        }
    }
    session.shutdown().await
}

/// Copies the session's output to `out` a line at a time, so that its lines and the
/// screen's answers never interleave inside a line.
pub async fn session_output<R: AsyncBufRead + Unpin>(
    mut output: R,
    out: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        if output.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        if out.send(line).await.is_err() {
            return Ok(());
        }
    }
}

/// Writes every line sent on `lines` to `writer`, until every sender is gone.
pub async fn write_lines<W: tokio::io::AsyncWrite + Unpin>(
    mut lines: mpsc::Receiver<Vec<u8>>,
    mut writer: W,
) -> std::io::Result<()> {
    while let Some(line) = lines.recv().await {
        writer.write_all(&line).await?;
        writer.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_and_id(line: &str) -> (i64, Value) {
        match screen(line.as_bytes()) {
            Screened::Answer(a) => (a["error"]["code"].as_i64().unwrap(), a["id"].clone()),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn what_json_rpc_calls_an_error_gets_one_with_the_id_when_it_can_be_read() {
        assert_eq!(code_and_id("not json"), (-32700, Value::Null));
        assert_eq!(
            code_and_id("{\"jsonrpc\":\"2.0\",\"id\":1"),
            (-32700, Value::Null)
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code_and_id(&deep), (-32700, Value::Null));
        assert_eq!(
            code_and_id(
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","arguments":{"n":1e400}}}"#
            ),
            (-32700, Value::Null)
        );
        assert_eq!(
            code_and_id(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            (-32600, Value::Null)
        );
        assert_eq!(code_and_id("42"), (-32600, Value::Null));
        assert_eq!(
            code_and_id(r#"{"jsonrpc":"1.0","id":21,"method":"ping"}"#),
            (-32600, json!(21))
        );
        assert_eq!(
            code_and_id(r#"{"id":"a","method":"ping"}"#),
            (-32600, json!("a"))
        );
        assert_eq!(
            code_and_id(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#),
            (-32600, Value::Null)
        );
        assert_eq!(
            code_and_id(r#"{"jsonrpc":"2.0","id":22,"method":7}"#),
            (-32600, json!(22))
        );
        assert_eq!(
            code_and_id(r#"{"jsonrpc":"2.0","id":23}"#),
            (-32600, json!(23))
        );
        for params in [
            "",
            r#","params":[]"#,
            r#","params":{"name":"x","arguments":[]}"#,
            r#","params":{"arguments":{}}"#,
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call"{params}}}"#);
            assert_eq!(code_and_id(&line), (-32602, json!(5)), "{line}");
        }
    }

    #[test]
    fn everything_else_reaches_the_session_unchanged() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"list_grants"}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":9,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":-3,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"t","arguments":null}}"#,
        ] {
            assert_eq!(screen(line.as_bytes()), Screened::Forward, "{line}");
        }
        assert_eq!(screen(b"  \r"), Screened::Ignore);
        // A response is never answered, even an ill-formed one.
        let parse_error = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#;
        assert_eq!(screen(parse_error.as_bytes()), Screened::Ignore);
        // Ids rmcp cannot read (a fraction, beyond 64 bits) are answered here, with id null.
        assert_eq!(
            code_and_id(r#"{"jsonrpc":"2.0","id":8.5,"method":"ping"}"#),
            (-32600, Value::Null)
        );
        assert_eq!(
            code_and_id(r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#),
            (-32600, Value::Null)
        );
        // Past i64 but within u64: readable here, not by rmcp; answered with the id.
        assert_eq!(
            code_and_id(r#"{"jsonrpc":"2.0","id":9223372036854775808,"method":"ping"}"#),
            (-32600, json!(9223372036854775808u64))
        );
    }

    #[test]
    fn shapes_rmcp_would_answer_without_the_id_are_answered_here_with_it() {
        // Params that are not an object, and a _meta that is not one.
        for line in [
            r#"{"jsonrpc":"2.0","id":35,"method":"ping","params":5}"#,
            r#"{"jsonrpc":"2.0","id":35,"method":"tools/list","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":35,"method":"initialize","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":35,"method":"tools/call","params":{"name":"list_grants","arguments":{},"_meta":5}}"#,
        ] {
            assert_eq!(code_and_id(line), (-32602, json!(35)), "{line}");
        }
        // A key twice, anywhere: the id is echoed unless it is the doubled key.
        for (line, id) in [
            (
                r#"{"jsonrpc":"2.0","id":37,"method":"tools/call","params":{"name":"list_grants","arguments":{},"name":"list_grants"}}"#,
                json!(37),
            ),
            (
                r#"{"jsonrpc":"2.0","id":38,"method":"ping","method":"ping"}"#,
                json!(38),
            ),
            (
                r#"{"jsonrpc":"2.0","id":31,"id":32,"method":"ping"}"#,
                Value::Null,
            ),
            // A doubled `id` deeper down is not the message's id.
            (
                r#"{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"request_execution","arguments":{"params":{"id":1,"id":2}}}}"#,
                json!(77),
            ),
        ] {
            assert_eq!(code_and_id(line), (-32600, id), "{line}");
        }
        // Deep parameters are the broker's to bound (32 levels of its own body), not the
        // screen's: a tool call 40 levels deep reaches the session.
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":40,"method":"tools/call","params":{{"name":"request_execution","arguments":{{"params":{}1{}}}}}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(screen(deep.as_bytes()), Screened::Forward, "{deep}");
        // A notification with odd params is not answered (nothing waits for it).
        assert_eq!(
            screen(br#"{"jsonrpc":"2.0","method":"notifications/initialized","params":5}"#),
            Screened::Forward
        );
    }

    #[tokio::test]
    async fn a_line_past_the_cap_is_dropped_to_its_end_and_the_next_one_read() {
        let input = format!("{}\nshort\nlast", "x".repeat(100));
        let mut reader = tokio::io::BufReader::with_capacity(16, input.as_bytes());
        let mut line = Vec::new();
        assert_eq!(
            next_line(&mut reader, &mut line, 50).await.unwrap(),
            Some(false)
        );
        assert_eq!(
            next_line(&mut reader, &mut line, 50).await.unwrap(),
            Some(true)
        );
        assert_eq!(line, b"short\n");
        assert_eq!(
            next_line(&mut reader, &mut line, 50).await.unwrap(),
            Some(true)
        );
        assert_eq!(line, b"last");
        assert_eq!(next_line(&mut reader, &mut line, 50).await.unwrap(), None);
    }
}
