use super::*;
use serde_json::json;

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn nothing_an_action_started_outlives_it_and_the_digests_are_of_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("late");
    let sh = |script: String, timeout: Duration| {
        run_argv("/bin/sh", &["-c".to_owned(), script], timeout).unwrap()
    };
    // A background child that would write after the action exited (and holds its
    // stdout meanwhile): killed with the action's process group, output complete.
    let ran = sh(
        format!("(sleep 1; touch {}) & echo hello", late.display()),
        Duration::from_secs(10),
    );
    assert!(ran.output_complete && !ran.timed_out);
    assert_eq!(ran.stdout, b"hello\n");
    assert_eq!(
        ran.stdout_sha256,
        <[u8; 32]>::from(Sha256::digest(b"hello\n"))
    );
    // Timed out: the whole group is killed, not only the first process.
    let ran = sh(
        format!("(sleep 1; touch {}) & sleep 10", late.display()),
        Duration::from_millis(300),
    );
    assert!(ran.timed_out);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !late.exists(),
        "a child of the action acted after it was killed"
    );
    // A descendant that left the group (given the time to) keeps the pipe: the digest is of
    // what arrived, and the outcome says it is incomplete (never the digest of nothing).
    let ran = sh(
        "setsid sleep 4 & sleep 0.5; echo hello".to_owned(),
        Duration::from_secs(10),
    );
    assert!(!ran.output_complete);
    assert_eq!(ran.stdout, b"hello\n");
    assert_eq!(
        ran.stdout_sha256,
        <[u8; 32]>::from(Sha256::digest(b"hello\n"))
    );
}

#[test]
fn shells_are_refused_unless_allowed() {
    for bad in [
        &["/bin/sh", "-c", "echo {x}"][..],
        &["/usr/bin/bash", "{x}"],
        &["/usr/bin/env", "bash", "{x}"],
        &["/usr/bin/env", "-i", "/bin/dash", "{x}"],
        &["/usr/bin/python3", "-c", "print(1)"],
        &["/bin/busybox", "sh"],
        // Reported by a review: other names, wrappers, interpreters and option clusters.
        &["/bin/rbash", "{x}"],
        &["/bin/sh.distrib", "{x}"],
        &["/usr/bin/perl", "-e", "{x}"],
        &["/usr/bin/perl", "-ne", "{x}"],
        &["/usr/bin/env", "-S", "sh -c", "{x}"],
        &["/usr/bin/nice", "/bin/sh", "{x}"],
        &["/usr/bin/timeout", "5", "/bin/bash", "{x}"],
        &["/usr/bin/nice", "/bin/bash", "-ec", "{x}"],
        &["/usr/bin/sudo", "-u", "app", "/bin/sh", "/opt/x.sh"],
        &["/usr/bin/node", "--eval", "{x}"],
        &["/usr/bin/awk", "-e", "{x}"],
        // ssh runs its command through the remote user's shell: a parameter is code there.
        &[
            "/usr/bin/ssh",
            "-o",
            "BatchMode=yes",
            "deploy@db1",
            "/usr/local/bin/deploy",
            "--",
            "{name}",
        ],
        &["/usr/bin/nice", "ssh", "db1", "deploy", "{v}"],
        // Reported by a later review: programs that hand their command to sh -c, and
        // program texts taken from a parameter (awk's system(), sed's e command).
        &["/usr/bin/sg", "root", "{cmd}"],
        &["/usr/bin/watch", "-n", "1", "{cmd}"],
        &["/usr/bin/nice", "/usr/bin/sg", "adm", "{cmd}"],
        &["/usr/bin/awk", "{prog}"],
        &["/usr/bin/gawk", "-F", ":", "{prog}", "/etc/passwd"],
        &["/usr/bin/awk", "--", "{prog}"],
        &["/bin/sed", "{script}", "/srv/file"],
        &["/bin/sed", "-n", "-e", "{script}", "/srv/file"],
        &["/usr/bin/timeout", "5", "/bin/sed", "{script}"],
        // Options whose value is code, or a program the option parser takes for another
        // option's value (reported by the review of the first version of this rule).
        &[
            "/usr/bin/awk",
            "-W",
            "interactive",
            "{prog}",
            "/etc/hostname",
        ],
        &["/usr/bin/gawk", "-i", "inplace", "{prog}", "/srv/file"],
        &[
            "/usr/bin/gawk",
            "-f",
            "/opt/r.awk",
            "--load",
            "{lib}",
            "--",
            "{f}",
        ],
        &["/bin/sed", "s/a/b/", "{file}"],
        // sed's -E is extended regular expressions, not a script file; a path or a user
        // name that looks like awk or sed must not stand in for the wrapped program.
        &["/bin/sed", "-E", "--", "{script}", "/srv/f"],
        &["/usr/bin/nice", "/bin/sed", "-E", "--", "{script}"],
        &[
            "/usr/bin/systemd-run",
            "--working-directory=/srv/awk",
            "-E",
            "LANG=C",
            "--",
            "/usr/bin/awk",
            "{prog}",
        ],
        &[
            "/usr/bin/sudo",
            "-u",
            "sed-ops",
            "-E",
            "--",
            "/usr/bin/awk",
            "{prog}",
        ],
        &["/usr/bin/awk", "-e", "BEGIN{}", "--", "{prog}"],
        // A parameter where a wrapper expects its program: the agent would pick `sh`
        // (reported by the review of issue 14's text). An option's value that is a
        // directory or a plain file is not taken for the program.
        &["/usr/bin/env", "{name}", "{text}"],
        &["/usr/bin/sudo", "-u", "nobody", "{name}"],
        &["/usr/bin/setsid", "{name}"],
        &["/usr/bin/xargs", "{name}"],
        &["/usr/bin/timeout", "5", "{name}", "/srv/f"],
        &["/usr/bin/env", "/usr/bin/nice", "{name}"],
        &["/usr/bin/env", "-C", "/usr/bin", "{name}"],
        &["/usr/bin/flock", "/etc/passwd", "{name}"],
        &["/usr/bin/timeout", "5", "cp", "{a}", "{b}"],
        // Wrappers under a variant name, and more programs that run another (reported by the
        // review of the rule).
        &["/opt/sudo/sudo.ws", "-u", "app", "{name}"],
        &["/usr/bin/timeout", "5", "/usr/local/bin/sudo-rs", "{name}"],
        &["/usr/bin/setarch", "x86_64", "{name}"],
        &[
            "/usr/bin/timeout",
            "5",
            "/usr/bin/setarch",
            "x86_64",
            "{name}",
        ],
        &["/usr/bin/ssh-agent", "{name}"],
        &["/usr/bin/dbus-run-session", "--", "{name}"],
    ] {
        assert!(ArgvTemplate::new(argv(bad), false).is_err(), "{bad:?}");
    }
    assert!(ArgvTemplate::new(argv(&["/bin/sh", "/opt/x.sh", "{x}"]), true).is_ok());
    // Programs whose names merely start with a wrapper's are programs of their own (reported
    // by the review of the variant rule).
    for good in [
        &["/opt/bin/time-tracker", "--date", "{x}"][..],
        &["/usr/local/bin/env-sync", "{x}"],
        &["/opt/bin/script.sh", "{x}"],
        &["/usr/bin/strace-log-merge", "{x}"],
        &["/usr/bin/ssh-keyscan", "{host}"],
        &["/usr/bin/timeout", "5", "/usr/bin/cp", "--", "{a}", "{b}"],
    ] {
        assert!(ArgvTemplate::new(argv(good), false).is_ok(), "{good:?}");
    }
    for bad in [
        &["/usr/bin/timeout2", "{x}"][..],
        &["/usr/bin/fakeroot-sysv", "{x}"],
        &["/usr/sbin/start-stop-daemon", "--start", "--exec", "{x}"],
        &["/usr/bin/bwrap", "--ro-bind", "/", "/", "{x}"],
    ] {
        assert!(ArgvTemplate::new(argv(bad), false).is_err(), "{bad:?}");
    }
    // A wrapped program that is not on this host is named as the cause, not a later option's
    // value.
    let e = ArgvTemplate::new(
        argv(&[
            "/usr/bin/timeout",
            "5",
            "/opt/not-there/deploy",
            "--config",
            "/etc/app.toml",
            "{v}",
        ]),
        false,
    )
    .unwrap_err();
    assert!(
        e.contains("\"/opt/not-there/deploy\" is not an executable file on this host"),
        "{e}"
    );
    // Programs that are not shells keep working, with their own options.
    for good in [
        &["/usr/bin/python3", "/opt/migrate.py", "--version", "{v}"][..],
        &[
            "/usr/bin/kubectl",
            "scale",
            "--replicas",
            "{n}",
            "deploy/api",
        ],
        &["/usr/bin/grep", "-r", "sh", "/srv"],
        &["/usr/bin/nice", "/usr/bin/cp", "-a", "{src}", "/backup/"],
        &["/usr/bin/timeout", "5", "/usr/bin/cp", "{a}", "{b}"],
        &["/usr/bin/env", "/usr/bin/nice", "/usr/bin/cp", "{a}", "/b"],
        &["/usr/bin/shred", "-u", "{file}"],
        &["/usr/bin/ssh", "db1", "/usr/local/bin/restart-api"],
        &["/usr/bin/ssh-keyscan", "{host}"],
        // The program is the configuration's own, and parameters follow `--`: data.
        &[
            "/usr/bin/awk",
            "-F",
            ":",
            "-f",
            "/opt/report.awk",
            "--",
            "{file}",
        ],
        &["/bin/sed", "-e", "s/a/b/", "--", "{file}"],
        &["/bin/sed", "-n", "s/a/b/p", "/srv/file"],
        &["/usr/bin/sg", "adm", "/usr/local/bin/rotate-logs"],
        // The same words as arguments of another program are words.
        &["/usr/bin/gh", "run", "watch", "{run_id}"],
        &[
            "/usr/local/bin/deploy",
            "--strategy",
            "parallel",
            "--",
            "{service}",
        ],
        &["/usr/bin/grep", "-r", "sed", "{file}"],
        &["/usr/bin/apt-get", "install", "-y", "gawk", "{pkg}"],
    ] {
        assert!(ArgvTemplate::new(argv(good), false).is_ok(), "{good:?}");
    }
    assert!(ArgvTemplate::new(argv(&["/usr/bin/env", "FOO=1", "/usr/bin/true"]), false).is_ok());
}

#[test]
fn placeholders_are_whole_elements() {
    assert!(ArgvTemplate::new(argv(&["/bin/echo", "--name={name}"]), false).is_err());
    assert!(ArgvTemplate::new(argv(&["/bin/echo", "{a}{b}"]), false).is_err());
    assert!(ArgvTemplate::new(argv(&["echo", "{a}"]), false).is_err());
    assert!(ArgvTemplate::new(argv(&["/bin/echo", "{a}", "{a}"]), false).is_err());
}

#[test]
fn values_become_single_arguments_and_are_checked() {
    let t = ArgvTemplate::new(argv(&["/bin/echo", "--", "{a}", "{b}", "{c}"]), false).unwrap();
    let (_, args) = t
        .render(&json!({"a": "; rm -rf / $(id) `id`\nx", "b": 3, "c": true}))
        .unwrap();
    assert_eq!(args, argv(&["--", "; rm -rf / $(id) `id`\nx", "3", "true"]));
    let (_, args) = t
        .render(&json!({"a": "--output=/etc/passwd", "b": -1, "c": false}))
        .unwrap();
    assert_eq!(args[1], "--output=/etc/passwd");
    assert!(t
        .render(&json!({"a": "x\u{0}", "b": 1, "c": true}))
        .is_err());
    assert!(t.render(&json!({"a": 1.5, "b": 1, "c": true})).is_err());
    assert!(t.render(&json!({"a": [], "b": 1, "c": true})).is_err());
    assert!(t.render(&json!({"a": "x", "b": 1})).is_err());
    assert!(t
        .render(&json!({"a": "x", "b": 1, "c": true, "d": 1}))
        .is_err());
    let no_dashes = ArgvTemplate::new(argv(&["/bin/echo", "{a}"]), false).unwrap();
    assert!(no_dashes
        .render(&json!({"a": "--output=/etc/passwd"}))
        .is_err());
}

#[test]
fn http_urls_stay_under_their_prefix() {
    let allow = vec!["http://127.0.0.1:9/items/".to_owned()];
    assert!(HttpTemplate::new("POST", "http://127.0.0.1:9/other/{x}", &allow).is_err());
    assert!(HttpTemplate::new("TRACE", "http://127.0.0.1:9/items/{x}", &allow).is_err());
    let t = HttpTemplate::new("POST", "http://127.0.0.1:9/items/{x}", &allow).unwrap();
    let (_, url, _) = t.render(&json!({"x": "../../admin?a=1"})).unwrap();
    assert_eq!(url, "http://127.0.0.1:9/items/..%2F..%2Fadmin%3Fa%3D1");
    // Neither a relative segment nor an empty one (`/items/`, the collection) is one item.
    for x in [".", "..", ""] {
        let err = t.render(&json!({ "x": x })).unwrap_err();
        assert!(err.contains("\"x\""), "{x:?}: {err}");
    }
}

#[test]
fn a_timeout_kills_the_program() {
    let out = run_argv("/bin/sleep", &argv(&["5"]), Duration::from_millis(200)).unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, -1);
    assert!(!out.succeeded(false));
    let out = run_argv("/bin/echo", &argv(&["hi"]), Duration::from_secs(5)).unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.succeeded(false));
    let out = run_argv("/bin/false", &[], Duration::from_secs(5)).unwrap();
    assert_eq!(out.exit_code, 1);
    assert!(!out.succeeded(false));
}

/// A one-connection HTTP server on loopback: answers the first request with `status` and
/// `body` (or never, with `None`), and hands the request's bytes back.
async fn one_shot_server(
    answer: Option<(u16, &'static str)>,
) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/items/", listener.local_addr().unwrap());
    let served = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then the body its Content-Length announces.
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length || n == 0 {
                    break;
                }
            }
        }
        match answer {
            Some((status, body)) => {
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(reply.as_bytes()).await.unwrap();
            }
            None => tokio::time::sleep(Duration::from_secs(5)).await,
        }
        seen
    });
    (url, served)
}

#[tokio::test]
async fn an_http_action_sends_the_json_body_and_reports_status_and_body_digest() {
    let (url, served) = one_shot_server(Some((201, "{\"id\":7}"))).await;
    let body = br#"{"name":"x"}"#.to_vec();
    let outcome = run_http("PUT", &format!("{url}x"), body, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 201);
    assert!(!outcome.timed_out);
    assert!(outcome.succeeded(true));
    // A status of a process would be a failure; as an HTTP status it is a success.
    assert!(!outcome.succeeded(false));
    assert_eq!(outcome.stdout, b"{\"id\":7}");
    assert_eq!(
        outcome.stdout_sha256,
        <[u8; 32]>::from(Sha256::digest(b"{\"id\":7}"))
    );
    let request = String::from_utf8(served.await.unwrap()).unwrap();
    assert!(
        request.starts_with("PUT /items/x HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("content-type: application/json"),
        "{request}"
    );
    assert!(request.ends_with("\r\n\r\n{\"name\":\"x\"}"), "{request}");
}

#[tokio::test]
async fn an_http_action_that_does_not_answer_in_time_is_timed_out() {
    let (url, _served) = one_shot_server(None).await;
    let outcome = run_http("POST", &url, b"{}".to_vec(), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(outcome.timed_out);
    assert_eq!(outcome.exit_code, -1);
    assert!(!outcome.succeeded(true));
}

#[tokio::test]
async fn an_http_action_answered_with_an_error_status_did_not_succeed() {
    let (url, _served) = one_shot_server(Some((500, "{}"))).await;
    let outcome = run_http("POST", &url, b"{}".to_vec(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 500);
    assert!(!outcome.succeeded(true));
}
