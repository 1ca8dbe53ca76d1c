//! The shell-refusal rules of argv templates: which programs count as a shell, a wrapper that
//! runs another program, a remote or local command string, or an interpreter given its program
//! inline, and why an argv looks like a shell invocation. Checked when an action is loaded,
//! unless it sets `allow_shell = true`. A heuristic to stop an accidental shell, never a sandbox.

use super::placeholder;

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
    "setarch",
    "linux32",
    "linux64",
    "choom",
    "runcon",
    "fakeroot",
    "run0",
    "chpst",
    "dbus-run-session",
    "ssh-agent",
    "start-stop-daemon",
    "bwrap",
    "pkexec",
    "gosu",
    "su-exec",
    "setuidgid",
    "envdir",
    "softlimit",
    "setlock",
    "faketime",
    "eatmydata",
    "xvfb-run",
    "systemd-nspawn",
    "ssh",
];

/// Variants of a wrapper's name that are the same program (`sudo-rs`, `sudo.ws`,
/// `fakeroot-sysv`), beside a version after the name (`timeout2`, `env.1`).
const WRAPPER_VARIANTS: &[&str] = &["-rs", ".ws", "-sysv", "-tcp"];

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

/// Why `argv` looks like a shell invocation, if it does: a shell (or a multi-call binary
/// holding one) as the program, or anywhere after a wrapper that runs another program (`env`,
/// `nice`, `timeout`, `sudo`, … also as `env -S "sh -c …"`); an interpreter given its program
/// inline (`perl -e`, `python3 -c`); or a literal `-c` or a short-option cluster ending in `c`
/// (`-ec`), a command string for shells and interpreters alike. A symbolic link is judged by
/// what it points to as well as by its own name. A heuristic with one purpose: to stop an
/// accidental shell, not to sandbox a program that is meant to run arbitrary code.
pub(super) fn shell_reason(argv: &[String]) -> Option<String> {
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
        // count by name, with a version after it or a known variant (`sudo-rs`); other names
        // that merely start with one (`time-tracker`, `env.sh`, `ssh-keyscan`) are programs
        // of their own. The files are judged on this host, not inside a chroot or namespace.
        let is_wrapper = |a: &str| {
            names(a).iter().any(|n| {
                WRAPPERS.iter().any(|family| {
                    n.strip_prefix(family).is_some_and(|rest| {
                        let mut chars = rest.chars();
                        rest.is_empty()
                            || WRAPPER_VARIANTS.contains(&rest)
                            || match chars.next() {
                                Some(c) if c.is_ascii_digit() => true,
                                Some('.') => chars.next().is_some_and(|c| c.is_ascii_digit()),
                                _ => false,
                            }
                    })
                })
            })
        };
        let runs_a_program = is_wrapper(program);
        let mut not_a_program: Option<&String> = None;
        for a in rest.iter().take_while(|_| runs_a_program) {
            if matches!(placeholder(a), Ok(Some(_))) {
                let hint = not_a_program.map_or_else(String::new, |p| {
                    format!(" ({p:?} is not an executable file on this host)")
                });
                return Some(format!(
                    "the parameter {a} could be the program that {program:?} runs: name that \
                     program by the absolute path of an executable file before any \
                     parameter{hint}"
                ));
            }
            if a.starts_with('/') {
                if !is_executable_file(a) {
                    not_a_program.get_or_insert(a);
                } else if !is_wrapper(a) {
                    break;
                }
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
