//! Actions: what an operation turns into. An argv template runs a program with each parameter
//! as one separate argument (never a shell string); an HTTP template calls an allow-listed
//! URL with the parameters as its JSON body.
//!
//! Parameters are checked before anything runs: only strings, integers and booleans; no NUL;
//! every parameter must be used by the template and every placeholder must have one; a value
//! starting with `-` is refused unless its placeholder comes after a literal `--` (so it cannot
//! be read as an option). This module never builds a command line as text.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

mod shell;

use shell::shell_reason;

/// What an action is.
#[derive(Debug, Clone)]
pub enum ActionKind {
    /// Run a program.
    Argv(ArgvTemplate),
    /// Call an HTTP endpoint.
    Http(HttpTemplate),
}

/// The most output kept for the answer to the agent (the digest covers all of it).
pub const MAX_KEPT_OUTPUT: usize = 64 * 1024;

/// One argv element of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    Literal(String),
    /// `{name}`: the parameter `name`, whole; `after_dashes` when a literal `--` precedes it.
    Param {
        name: String,
        after_dashes: bool,
    },
}

/// A validated argv template.
#[derive(Debug, Clone)]
pub struct ArgvTemplate {
    program: String,
    elements: Vec<Element>,
}

impl ArgvTemplate {
    /// Validates `argv`: `argv[0]` an absolute path to a program, placeholders whole elements
    /// (`{name}`), no shell unless `allow_shell`.
    pub fn new(argv: Vec<String>, allow_shell: bool) -> Result<Self, String> {
        if !allow_shell {
            if let Some(why) = shell_reason(&argv) {
                return Err(format!(
                    "{why}: actions never run a shell (set allow_shell = true on this action only if you must)"
                ));
            }
        }
        let mut iter = argv.into_iter();
        let program = iter.next().ok_or("argv is empty")?;
        if !program.starts_with('/') {
            return Err(format!("argv[0] {program:?} must be an absolute path"));
        }
        if program.contains('{') {
            return Err("argv[0] cannot be a placeholder".into());
        }
        let mut elements = Vec::new();
        let mut after_dashes = false;
        for arg in iter {
            if arg.contains('\0') {
                return Err("argv elements cannot contain NUL".into());
            }
            match placeholder(&arg)? {
                Some(name) => {
                    if elements
                        .iter()
                        .any(|e| matches!(e, Element::Param { name: n, .. } if *n == name))
                    {
                        return Err(format!("placeholder {{{name}}} is used twice"));
                    }
                    elements.push(Element::Param { name, after_dashes });
                }
                None => {
                    if arg == "--" {
                        after_dashes = true;
                    }
                    elements.push(Element::Literal(arg));
                }
            }
        }
        Ok(ArgvTemplate { program, elements })
    }

    /// The program and its arguments for `params`, after the checks of the module documentation.
    pub fn render(&self, params: &serde_json::Value) -> Result<(String, Vec<String>), String> {
        let map = params
            .as_object()
            .ok_or("the parameters must be an object")?;
        for key in map.keys() {
            if !self
                .elements
                .iter()
                .any(|e| matches!(e, Element::Param { name, .. } if name == key))
            {
                return Err(format!("parameter {key:?} is not used by this action"));
            }
        }
        let mut args = Vec::with_capacity(self.elements.len());
        for element in &self.elements {
            match element {
                Element::Literal(s) => args.push(s.clone()),
                Element::Param { name, after_dashes } => {
                    let value = map
                        .get(name)
                        .ok_or_else(|| format!("parameter {name:?} is missing"))?;
                    let text = scalar(name, value)?;
                    if text.starts_with('-') && !after_dashes {
                        return Err(format!(
                            "parameter {name:?} starts with '-' and would be read as an option"
                        ));
                    }
                    args.push(text);
                }
            }
        }
        Ok((self.program.clone(), args))
    }
}

/// `{name}` → `Some(name)`; a literal → `None`; a partial placeholder is an error.
fn placeholder(arg: &str) -> Result<Option<String>, String> {
    if let Some(name) = arg.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Ok(Some(name.to_owned()));
        }
    }
    if arg.contains('{') || arg.contains('}') {
        return Err(format!(
            "argv element {arg:?}: a placeholder must be a whole element such as \"{{name}}\""
        ));
    }
    Ok(None)
}

/// A parameter as one argument: strings as they are, integers and booleans as JSON writes
/// them. Anything else, and NUL, is refused.
fn scalar(name: &str, value: &serde_json::Value) -> Result<String, String> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => {
            return Err(format!(
                "parameter {name:?} must be a string, an integer or a boolean"
            ))
        }
    };
    if text.contains('\0') {
        return Err(format!("parameter {name:?} contains NUL"));
    }
    Ok(text)
}

/// A validated HTTP template.
#[derive(Debug, Clone)]
pub struct HttpTemplate {
    method: String,
    url: String,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

impl HttpTemplate {
    /// Validates the method and that the URL template starts with one of `allow` (before any
    /// placeholder).
    pub fn new(method: &str, url: &str, allow: &[String]) -> Result<Self, String> {
        if !METHODS.contains(&method) {
            return Err(format!("method {method:?} is not one of {METHODS:?}"));
        }
        let literal_head = url.split('{').next().unwrap_or("");
        if !allow.iter().any(|p| literal_head.starts_with(p.as_str())) {
            return Err(format!("url {url:?} is not under an http_allow prefix"));
        }
        Ok(HttpTemplate {
            method: method.to_owned(),
            url: url.to_owned(),
        })
    }

    /// The method, the URL with each `{name}` replaced by the percent-encoded parameter (so it
    /// stays inside one path segment), and the JSON body (all parameters).
    pub fn render(&self, params: &serde_json::Value) -> Result<(String, String, Vec<u8>), String> {
        let map = params
            .as_object()
            .ok_or("the parameters must be an object")?;
        let mut url = String::new();
        let mut rest = self.url.as_str();
        while let Some(start) = rest.find('{') {
            url.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').ok_or("unterminated placeholder in url")?;
            let name = &after[..end];
            let value = map
                .get(name)
                .ok_or_else(|| format!("parameter {name:?} is missing"))?;
            let text = scalar(name, value)?;
            if text == "." || text == ".." {
                return Err(format!("parameter {name:?} is a relative path segment"));
            }
            // Empty, `/users/{id}` would name `/users/`: another resource than any id.
            if text.is_empty() {
                return Err(format!(
                    "parameter {name:?} is empty, which would drop its part of the URL"
                ));
            }
            url.push_str(&percent_encode(&text));
            rest = &after[end + 1..];
        }
        url.push_str(rest);
        for (key, value) in map {
            if !matches!(
                value,
                serde_json::Value::String(_)
                    | serde_json::Value::Bool(_)
                    | serde_json::Value::Number(_)
            ) {
                return Err(format!(
                    "parameter {key:?} must be a string, a number or a boolean"
                ));
            }
        }
        let body = serde_json::to_vec(params).map_err(|e| e.to_string())?;
        Ok((self.method.clone(), url, body))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What an action did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code (-1 killed), or the HTTP status.
    pub exit_code: i64,
    /// Killed on its timeout.
    pub timed_out: bool,
    /// SHA-256 of all of stdout (HTTP: the response body).
    pub stdout_sha256: [u8; 32],
    /// SHA-256 of all of stderr.
    pub stderr_sha256: [u8; 32],
    /// The first [`MAX_KEPT_OUTPUT`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// The first [`MAX_KEPT_OUTPUT`] bytes of stderr.
    pub stderr: Vec<u8>,
    /// Start.
    pub started: SystemTime,
    /// End.
    pub finished: SystemTime,
    /// Whether both outputs were read to their end (false: a descendant outside the action's
    /// process group still held a pipe 2 s after the action ended; the digests are of what
    /// arrived until then).
    pub output_complete: bool,
}

/// The receipt's `exit_code` of an action that could not run, or whose result is unknown (an
/// upstream that closed the connection mid-answer may have acted).
pub const EXIT_OUTCOME_UNKNOWN: i64 = -2;

/// What a run whose outcome is unknown leaves on its stderr (and what its digest covers); the
/// cause is in the executor's log, never in an answer to the agent.
pub const OUTCOME_UNKNOWN_TEXT: &str =
    "seb exec: the action failed after its token was redeemed; its outcome is unknown";

impl Outcome {
    /// An action that could not run, or whose result is unknown, started at `started`.
    pub fn unknown(started: SystemTime) -> Self {
        let stderr = OUTCOME_UNKNOWN_TEXT.as_bytes().to_vec();
        Outcome {
            exit_code: EXIT_OUTCOME_UNKNOWN,
            timed_out: false,
            stdout_sha256: Sha256::digest(b"").into(),
            stderr_sha256: Sha256::digest(&stderr).into(),
            stdout: Vec::new(),
            stderr,
            started,
            finished: SystemTime::now().max(started),
            output_complete: true,
        }
    }

    /// Whether the action did what it was asked: a process that exited 0, or (`http`) an
    /// answer in 2xx; never one killed on its timeout.
    pub fn succeeded(&self, http: bool) -> bool {
        !self.timed_out
            && if http {
                (200..300).contains(&self.exit_code)
            } else {
                self.exit_code == 0
            }
    }
}

/// Reads a pipe to its end, sending each chunk as it arrives and then `None`.
fn drain(mut pipe: impl Read, chunks: &std::sync::mpsc::Sender<Option<Vec<u8>>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 || chunks.send(Some(buf[..n].to_vec())).is_err() {
            break;
        }
    }
    let _ = chunks.send(None);
}

/// What [`drain`] sent until its end or `until`: the digest of all of it, the first bytes
/// kept, and whether the pipe's end was reached.
fn collected(
    chunks: &std::sync::mpsc::Receiver<Option<Vec<u8>>>,
    until: Instant,
) -> ([u8; 32], Vec<u8>, bool) {
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut complete = false;
    while let Ok(chunk) = chunks.recv_timeout(until.saturating_duration_since(Instant::now())) {
        let Some(chunk) = chunk else {
            complete = true;
            break;
        };
        hasher.update(&chunk);
        let room = MAX_KEPT_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    (hasher.finalize().into(), kept, complete)
}

/// Runs `program args` with an empty environment (but `PATH` and `LANG=C`), stdin from
/// /dev/null, in `/`, in a process group of its own; kills the whole group at `timeout`, and
/// when the program exits (what it started in the background must not act after the receipt
/// was signed). Blocking: call it from a blocking thread.
///
/// The output digests are of everything read. A descendant that left the group (`setsid`)
/// and kept the pipes open is not waited for past 2 s: the digests are then of what arrived
/// until then, and `output_complete` is false.
pub fn run_argv(
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Outcome, std::io::Error> {
    let (started, clock) = (SystemTime::now(), std::time::Instant::now());
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let group = rustix::process::Pid::from_child(&child);
    let kill_group = || {
        // ESRCH (nothing left in the group) is the usual answer once all have exited.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    if let Some(pipe) = stdout {
        std::thread::spawn(move || drain(pipe, &out_tx));
    }
    if let Some(pipe) = stderr {
        std::thread::spawn(move || drain(pipe, &err_tx));
    }
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    // The group is killed before its leader is reaped: until then the leader (alive or a
    // zombie) holds the group's id, so the signal cannot reach a group that reused it.
    let status = loop {
        let exited = rustix::process::waitid(
            rustix::process::WaitId::Pid(group),
            rustix::process::WaitIdOptions::EXITED
                | rustix::process::WaitIdOptions::NOHANG
                | rustix::process::WaitIdOptions::NOWAIT,
        )
        .map_err(std::io::Error::from)?;
        if exited.is_some() {
            kill_group();
            break child.wait()?;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            kill_group();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A descendant outside the group that kept the pipes open must not hold the answer: wait
    // a little, then take what arrived.
    let wait = Instant::now() + Duration::from_secs(2);
    let (stdout_sha256, stdout, out_complete) = collected(&out_rx, wait);
    let (stderr_sha256, stderr, err_complete) = collected(&err_rx, wait);
    Ok(Outcome {
        exit_code: if timed_out {
            -1
        } else {
            status.code().map_or(-1, i64::from)
        },
        timed_out,
        stdout_sha256,
        stderr_sha256,
        stdout,
        stderr,
        started,
        finished: finished_since(started, clock),
        output_complete: out_complete && err_complete,
    })
}

/// Calls an `http://` URL with a JSON body; the status is the exit code. Times out at
/// `timeout` (then `timed_out`, exit code -1).
pub async fn run_http(
    method: &str,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Outcome, String> {
    let (started, clock) = (SystemTime::now(), std::time::Instant::now());
    let call = crate::client::plain_http_json(method, url, body, "seb-exec");
    let empty: [u8; 32] = Sha256::digest(b"").into();
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok((status, bytes))) => Ok(Outcome {
            exit_code: i64::from(status),
            timed_out: false,
            stdout_sha256: Sha256::digest(&bytes).into(),
            stderr_sha256: empty,
            stdout: bytes.into_iter().take(MAX_KEPT_OUTPUT).collect(),
            stderr: Vec::new(),
            started,
            finished: finished_since(started, clock),
            output_complete: true,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(Outcome {
            exit_code: -1,
            timed_out: true,
            stdout_sha256: empty,
            stderr_sha256: empty,
            stdout: Vec::new(),
            stderr: Vec::new(),
            started,
            finished: finished_since(started, clock),
            output_complete: false,
        }),
    }
}

/// When an action that started at `started` (wall clock) finished: `started` plus the time
/// measured on the monotonic clock, so that a wall clock stepped back meanwhile (NTP) cannot
/// make a receipt finish before it started.
fn finished_since(started: SystemTime, clock: std::time::Instant) -> SystemTime {
    started.checked_add(clock.elapsed()).unwrap_or(started)
}

#[cfg(test)]
mod tests;
