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

/// What an action is.
#[derive(Debug, Clone)]
pub enum ActionKind {
    /// Run a program.
    Argv(ArgvTemplate),
    /// Call an HTTP endpoint.
    Http(HttpTemplate),
}

/// Programs refused as `argv[0]` (and anywhere after a wrapper) unless `allow_shell = true`:
/// shells and the multi-call binaries that contain one. A name counts with a version or
/// variant after it (`bash5`, `sh.distrib`, `ksh93`), and `rbash`, `pdksh`, `yash` too.
const SHELLS: &[&str] = &[
    "sh", "bash", "rbash", "dash", "zsh", "ksh", "pdksh", "mksh", "ash", "yash", "csh", "tcsh",
    "fish", "busybox", "toybox",
];

/// Programs that run the program named in their arguments (`nice /bin/sh …`): the whole rest
/// of the command line is searched for a shell.
const WRAPPERS: &[&str] = &[
    "env",
    "nice",
    "ionice",
    "chrt",
    "taskset",
    "numactl",
    "timeout",
    "nohup",
    "stdbuf",
    "setsid",
    "setpriv",
    "prlimit",
    "flock",
    "time",
    "sudo",
    "doas",
    "su",
    "runuser",
    "chroot",
    "unshare",
    "nsenter",
    "xargs",
    "watch",
    "script",
    "strace",
    "ltrace",
    "valgrind",
    "firejail",
    "systemd-run",
    "cgexec",
    "capsh",
    "ssh",
];

/// Programs that join the arguments after the host into one command string and have a shell
/// on the other host run it: a parameter after them is shell code there, so none is allowed
/// (unless `allow_shell = true`). Matched by exact name (`ssh-keyscan` is not one).
const REMOTE_SHELLS: &[&str] = &["ssh", "rsh", "slogin", "autossh"];

/// Programs that run their command argument through `sh -c` on this host (`sg group "cmd"`,
/// `watch "cmd"`, a terminal multiplexer's or GNU parallel's command): a parameter after them
/// is shell code, so none is allowed (unless `allow_shell = true`). Matched by exact name.
const LOCAL_COMMAND_STRINGS: &[&str] = &["sg", "watch", "tmux", "screen", "byobu", "parallel"];

/// Programs whose first operand is a program text unless an option gives the program (`awk
/// 'prog' file`, `sed 's/a/b/e' file`; sed's `e` runs a shell command, awk's `system()` too):
/// that text must not come from a parameter, nor the value of `-e` / `--expression`.
const PROGRAM_OPERANDS: &[&str] = &["awk", "gawk", "mawk", "nawk", "busybox-awk", "sed", "gsed"];

/// The sed family among [`PROGRAM_OPERANDS`]: `-e SCRIPT` gives their program too.
const SED_FAMILY: &[&str] = &["sed", "gsed"];

/// Interpreters that take a program as an argument (`-c`, `-e`, `--eval`): refused with such
/// an option. Running a script file with them stays allowed.
const INTERPRETERS: &[&str] = &[
    "python",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "expect",
    "pwsh",
    "osascript",
    "R",
    "Rscript",
    "guile",
    "racket",
];

/// Whether `name` (a file name) is `family` or `family` followed by a version or variant.
fn is_named(name: &str, family: &str) -> bool {
    name.strip_prefix(family).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '_')
    })
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

/// Why `argv` looks like a shell invocation, if it does: a shell (or a multi-call binary
/// holding one) as the program, or anywhere after a wrapper that runs another program (`env`,
/// `nice`, `timeout`, `sudo`, … also as `env -S "sh -c …"`); an interpreter given its program
/// inline (`perl -e`, `python3 -c`); or a literal `-c` or a short-option cluster ending in `c`
/// (`-ec`), a command string for shells and interpreters alike. A symbolic link is judged by
/// what it points to as well as by its own name. A heuristic with one purpose: to stop an
/// accidental shell, not to sandbox a program that is meant to run arbitrary code.
fn shell_reason(argv: &[String]) -> Option<String> {
    let names = |p: &str| -> Vec<String> {
        let mut names = vec![p.rsplit('/').next().unwrap_or(p).to_owned()];
        if p.starts_with('/') {
            if let Ok(real) = std::fs::canonicalize(p) {
                if let Some(name) = real.file_name().and_then(|n| n.to_str()) {
                    names.push(name.to_owned());
                }
            }
        }
        names
    };
    let is_shell = |p: &str| {
        // `env -S "sh -c …"` splits one argument into words: judge its first word.
        let first = p.split_whitespace().next().unwrap_or(p);
        names(first)
            .iter()
            .any(|n| SHELLS.iter().any(|s| is_named(n, s)))
    };
    let (program, rest) = argv.split_first()?;
    if is_shell(program) {
        return Some(format!("argv[0] {program:?} is a shell"));
    }
    let program_names = names(program);
    let is = |list: &[&str]| {
        program_names
            .iter()
            .any(|n| list.iter().any(|family| is_named(n, family)))
    };
    if is(WRAPPERS) {
        if let Some(shell) = rest.iter().find(|a| is_shell(a)) {
            return Some(format!("{program:?} runs the shell {shell:?}"));
        }
        // A wrapper's options differ from one to the next, so the program it runs is taken to
        // be the first absolute path to an executable file that is not itself a wrapper: a
        // parameter before it could be that program (`env {name}` with name = "sh"). Wrappers
        // by their exact names here (`ssh-keyscan {host}` runs nothing).
        let is_wrapper = |a: &str| names(a).iter().any(|n| WRAPPERS.contains(&n.as_str()));
        let runs_a_program = is_wrapper(program);
        for a in rest.iter().take_while(|_| runs_a_program) {
            if matches!(placeholder(a), Ok(Some(_))) {
                return Some(format!(
                    "the parameter {a} could be the program that {program:?} runs: name that \
                     program by its absolute path before any parameter"
                ));
            }
            if a.starts_with('/') && is_executable_file(a) && !is_wrapper(a) {
                break;
            }
        }
    }
    let remote = |a: &String| names(a).iter().any(|n| REMOTE_SHELLS.contains(&n.as_str()));
    if let Some(at) = argv.iter().position(remote) {
        if let Some(param) = argv[at + 1..]
            .iter()
            .find(|a| matches!(placeholder(a), Ok(Some(_))))
        {
            return Some(format!(
                "{:?} hands the parameter {param} to a shell on the remote host (it joins its \
                 command into one string)",
                argv[at]
            ));
        }
    }
    // sg, watch, awk, sed, ... count as the program (argv[0]) or, after a program that runs
    // another (`nice`, `sudo -u app`, ...), anywhere: elsewhere they are words (`gh run watch`).
    let wrapped = is(WRAPPERS);
    // Every place that may be the program is judged: after a wrapper, an earlier word that
    // looks like one (a path in an option's value, a user name) must not stand in for it.
    let runs = |matches: &dyn Fn(&str) -> bool| -> Vec<usize> {
        argv.iter()
            .enumerate()
            .take(if wrapped { argv.len() } else { 1 })
            .filter(|(_, a)| names(a).iter().any(|n| matches(n)))
            .map(|(at, _)| at)
            .collect()
    };
    if let Some(&at) = runs(&|n| LOCAL_COMMAND_STRINGS.contains(&n)).first() {
        if let Some(param) = argv[at + 1..]
            .iter()
            .find(|a| matches!(placeholder(a), Ok(Some(_))))
        {
            return Some(format!(
                "{:?} hands the parameter {param} to a shell (it runs its command with sh -c)",
                argv[at]
            ));
        }
    }
    let is_sed = |n: &str| SED_FAMILY.iter().any(|family| is_named(n, family));
    for at in runs(&|n| PROGRAM_OPERANDS.iter().any(|family| is_named(n, family))) {
        let sed = names(&argv[at]).iter().any(|n| is_sed(n));
        if let Some(reason) = program_text_problem(&argv[at + 1..], sed) {
            return Some(format!("{:?}: {reason}", argv[at]));
        }
    }
    let inline = |a: &str| {
        matches!(
            a,
            "-e" | "-E" | "-c" | "-r" | "-p" | "--eval" | "--command" | "--print"
        ) || (a.starts_with('-') && !a.starts_with("--") && (a.contains('e') || a.contains('c')))
    };
    if is(INTERPRETERS) {
        if let Some(flag) = rest.iter().find(|a| inline(a)) {
            return Some(format!("{program:?} is given its program inline ({flag})"));
        }
    }
    if let Some(flag) = rest.iter().find(|a| {
        *a == "-c"
            || (a.starts_with('-') && !a.starts_with("--") && a.len() > 2 && a.ends_with('c'))
    }) {
        return Some(format!("a {flag} argument (a command string)"));
    }
    None
}

/// Whether `path` is a file that someone may execute (a directory or a data file is an
/// option's value, not the program a wrapper runs).
fn is_executable_file(path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why an awk- or sed-like program could take code from a parameter, if it could. Their
/// options differ between implementations, and several take a value that is code or a file to
/// load (`-e`, `-W`, gawk's `-i`/`-l`/`--load`), so where a parameter sits cannot be told
/// from the options: a parameter may only follow a literal `--`, and the program must then be
/// given before it by an option (`-f FILE`; sed's `-e SCRIPT` too), since the first operand
/// after `--` would otherwise be the program text.
fn program_text_problem(args: &[String], sed: bool) -> Option<String> {
    let is_param = |a: &String| matches!(placeholder(a), Ok(Some(_)));
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (options, operands) = args.split_at(end);
    if let Some(param) = options.iter().find(|a| is_param(a)) {
        return Some(format!(
            "the parameter {param} comes before `--`: with awk or sed a parameter may only \
             follow a literal `--` (an option's value or a program text would be code)"
        ));
    }
    if !operands.iter().any(is_param) {
        return None;
    }
    // Only the options that give the program: `-f FILE` for both, and sed's `-e SCRIPT`
    // (sed's `-E` is extended regular expressions; gawk's `-E` is refused as inline anyway).
    let gives_program = |a: &String| {
        matches!(a.as_str(), "-f" | "--file")
            || a.starts_with("--file=")
            || (a.starts_with("-f") && !a.starts_with("--"))
            || (sed
                && (matches!(a.as_str(), "-e" | "--expression") || a.starts_with("--expression=")))
    };
    if !options.iter().any(gives_program) {
        return Some(
            "a parameter follows `--`, but no `-f FILE` (or sed's `-e SCRIPT`) gives the \
             program before it: the first operand would be taken as the program text"
                .into(),
        );
    }
    None
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

impl Outcome {
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
