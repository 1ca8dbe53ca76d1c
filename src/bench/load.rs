//! The load generator of `seb bench broker`: agents with keep-alive or new connections, in a
//! closed or an open loop, in this process or in a `seb bench load` process of their own, and
//! what they measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use seb::client::ClientTls;

use crate::cli::{read_file, CliError, CliResult};

/// Options of `seb bench load`: the load generator on its own, in its own process, against a
/// running broker. `seb bench broker --external` starts it; it prints `ready` once its agents
/// are connected and the clock starts, then one `result` line and one `latencies` line.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The broker, `https://host:port`; several, comma-separated, spread the agents over them
    /// (replicas behind a load balancer).
    #[arg(long, value_delimiter = ',', required = true)]
    url: Vec<String>,
    /// The root certificate (PEM) the broker's certificate must chain to.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// The agent's certificate (PEM).
    #[arg(long)]
    cert: std::path::PathBuf,
    /// The agent's private key (PKCS#8 PEM).
    #[arg(long)]
    key: std::path::PathBuf,
    /// Concurrent agents (1 to 4096).
    #[arg(long, value_parser = super::broker::agent_count)]
    agents: usize,
    /// Seconds of load (1 to 3600).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Open loop: each agent's interval between requests, in microseconds (0: closed loop).
    #[arg(long, default_value_t = 0)]
    interval_us: u64,
    /// What each agent does.
    #[arg(long, value_enum, default_value = "keep-alive")]
    mode: Mode,
    /// Stop when standard input closes: `seb bench broker --external` starts its load
    /// generator so, and a bench that dies does not leave it running.
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

/// What a load-generating agent does per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Mode {
    /// One connection for all its requests (connected before the clock starts).
    KeepAlive,
    /// A new connection per request, TLS resumption off: a full handshake each time.
    NewConnection,
    /// A new connection, TLS resumption off, and no request: the handshake alone.
    HandshakeOnly,
}

/// When an agent sends its next request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pace {
    /// As soon as the previous answer arrives; latency counts from the send.
    Closed,
    /// Every `interval`, on a fixed schedule. A request sent late because the previous answer
    /// was late counts its latency from the scheduled time, so that the wait is not hidden.
    Every(Duration),
}

pub(super) struct Stats {
    pub(super) ok: usize,
    pub(super) failed: usize,
    /// Open loop: requests due before the end that were never sent (their agent was still
    /// waiting for an answer). Their latencies count, as the time from due to the end.
    pub(super) unsent: usize,
    pub(super) elapsed: Duration,
    pub(super) latencies: Vec<Duration>,
    /// CPU time of the broker's process: with the load generator in the same process (the
    /// default), the whole process; with `--external`, the broker's alone.
    pub(super) cpu: Option<Duration>,
    /// With `--external`: the load generator's own CPU time.
    pub(super) load_cpu: Option<Duration>,
    /// This process's CPU time when the clock started.
    pub(super) cpu_start: Option<Duration>,
    /// The one-minute load average at the end.
    pub(super) load_average: String,
}

impl Stats {
    pub(super) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Process CPU time per granted request, in microseconds.
    pub(super) fn cpu_per_request(&self) -> String {
        match self.cpu {
            Some(cpu) if self.ok > 0 => {
                format!("{:.0} µs", cpu.as_secs_f64() * 1e6 / self.ok as f64)
            }
            _ => "n/a".into(),
        }
    }

    /// Latency percentiles and CPU per token, as every load line prints them.
    pub(super) fn latency(&self) -> String {
        let load = match self.load_cpu {
            Some(cpu) if self.ok > 0 => format!(
                " (load generator {:.0} µs)",
                cpu.as_secs_f64() * 1e6 / self.ok as f64
            ),
            _ => String::new(),
        };
        format!(
            "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  CPU {}/token{load}  [load average {}]",
            self.pct(0.50),
            self.pct(0.95),
            self.pct(0.99),
            self.cpu_per_request(),
            self.load_average
        )
    }

    /// Broker CPU per granted request in microseconds, if known.
    pub(super) fn cpu_us(&self) -> Option<f64> {
        match self.cpu {
            Some(cpu) if self.ok > 0 => Some(cpu.as_secs_f64() * 1e6 / self.ok as f64),
            _ => None,
        }
    }

    /// The request counts.
    pub(super) fn counts(&self) -> String {
        format!("{} ok, {} failed", self.ok, self.failed)
    }

    pub(super) fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1e3
    }
}

/// Who generates the load: agents in this process, or a `seb bench load` child process.
pub(super) enum Driver {
    InProcess {
        keep_alive: ClientTls,
        full: ClientTls,
    },
    External {
        exe: std::path::PathBuf,
        ca: std::path::PathBuf,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

impl Driver {
    pub(super) async fn drive(
        &self,
        urls: &[String],
        agents: usize,
        duration: Duration,
        pace: Pace,
        mode: Mode,
    ) -> Result<Stats, CliError> {
        match self {
            Driver::InProcess { keep_alive, full } => {
                let tls = if mode == Mode::KeepAlive {
                    keep_alive
                } else {
                    full
                };
                let mut stats = load(urls, tls, agents, duration, pace, mode, || ()).await?;
                stats.cpu = match (stats.cpu_start, process_cpu()) {
                    (Some(a), Some(b)) => b.checked_sub(a),
                    _ => None,
                };
                Ok(stats)
            }
            Driver::External { exe, ca, cert, key } => {
                let mut command = std::process::Command::new(exe);
                command
                    .args(["bench", "load", "--url", &urls.join(","), "--mode"])
                    .arg(match mode {
                        Mode::KeepAlive => "keep-alive",
                        Mode::NewConnection => "new-connection",
                        Mode::HandshakeOnly => "handshake-only",
                    })
                    .arg("--ca")
                    .arg(ca)
                    .arg("--cert")
                    .arg(cert)
                    .arg("--key")
                    .arg(key)
                    .arg("--agents")
                    .arg(agents.to_string())
                    .arg("--seconds")
                    .arg(duration.as_secs().to_string())
                    .arg("--interval-us")
                    .arg(match pace {
                        Pace::Closed => "0".to_owned(),
                        Pace::Every(interval) => interval.as_micros().max(1).to_string(),
                    })
                    .arg("--exit-with-stdin")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped());
                // The child's output is read on a blocking thread: the broker's async workers
                // keep serving meanwhile.
                tokio::task::spawn_blocking(move || external_load(command)).await?
            }
        }
    }
}

/// Runs the load generator `command`, and measures this process's CPU time (the broker's)
/// from its `ready` to its `result`.
fn external_load(mut command: std::process::Command) -> Result<Stats, CliError> {
    use std::io::BufRead;
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or("no output from the load generator")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut cpu_start = None;
    let mut stats = None;
    for line in lines.by_ref() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ready") => cpu_start = process_cpu(),
            Some("result") => {
                let cpu_end = process_cpu();
                let n: Vec<u64> = words.map(|w| w.parse().unwrap_or(0)).collect();
                let [ok, failed, unsent, elapsed_us, load_cpu_ms] = n[..] else {
                    return Err(format!("bad result line from the load generator: {line}").into());
                };
                stats = Some(Stats {
                    ok: ok as usize,
                    failed: failed as usize,
                    unsent: unsent as usize,
                    elapsed: Duration::from_micros(elapsed_us),
                    latencies: Vec::new(),
                    cpu: match (cpu_start, cpu_end) {
                        (Some(a), Some(b)) => b.checked_sub(a),
                        _ => None,
                    },
                    cpu_start: None,
                    load_cpu: Some(Duration::from_millis(load_cpu_ms)),
                    load_average: load_average(),
                });
            }
            Some("latencies") => {
                if let Some(stats) = stats.as_mut() {
                    stats.latencies = words
                        .filter_map(|w| w.parse().ok())
                        .map(Duration::from_micros)
                        .collect();
                    stats.latencies.sort();
                }
            }
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the load generator failed: {status}").into());
    }
    stats.ok_or_else(|| "the load generator gave no result".into())
}

/// `seb bench load`: the load generator alone, in this process, against a running broker.
pub fn run_load_process(args: LoadArgs) -> CliResult {
    if args.exit_with_stdin {
        // The parent holds the other end of the pipe; it closes when the parent ends.
        std::thread::spawn(|| {
            use std::io::Read;
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(1);
        });
    }
    let root_pem = read_file(&args.ca)?;
    let cert_pem = read_file(&args.cert)?;
    let key_pem = read_file(&args.key)?;
    let tls = ClientTls::new(&root_pem, &cert_pem, &key_pem, args.mode == Mode::KeepAlive)?;
    let pace = match args.interval_us {
        0 => Pace::Closed,
        us => Pace::Every(Duration::from_micros(us)),
    };
    // One thread: the load generator should take as little of the machine as it can.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stats = runtime.block_on(load(
        &args.url,
        &tls,
        args.agents.max(1),
        Duration::from_secs(args.seconds),
        pace,
        args.mode,
        || {
            say!("ready");
        },
    ))?;
    let own = match (stats.cpu_start, process_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    say!(
        "result {} {} {} {} {}",
        stats.ok,
        stats.failed,
        stats.unsent,
        stats.elapsed.as_micros(),
        own.as_millis()
    );
    let mut line = String::from("latencies");
    for l in &stats.latencies {
        line.push_str(&format!(" {}", l.as_micros()));
    }
    say!("{line}");
    Ok(())
}

/// `agents` concurrent agents sending requests at `pace` for `duration`; `ready` runs when
/// the keep-alive agents are connected, right before the clock starts.
pub(super) async fn load(
    urls: &[String],
    tls: &ClientTls,
    agents: usize,
    duration: Duration,
    pace: Pace,
    mode: Mode,
    ready: impl FnOnce(),
) -> Result<Stats, CliError> {
    let keep_alive = mode == Mode::KeepAlive;
    let body = br#"{"operation":"bench.run","resource":"bench/broker","params":{"n":1}}"#;
    let request: Arc<[u8]> = format!(
        "POST /v1/executions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    )
    .into_bytes()
    .into();
    // Keep-alive agents connect before the clock starts: the handshakes (each with an HSM
    // signature) are not part of what a keep-alive load measures.
    let mut connected = Vec::with_capacity(agents);
    for i in 0..agents {
        connected.push(if keep_alive {
            Some(RawAgent::connect(&urls[i % urls.len()], tls).await?)
        } else {
            None
        });
    }
    ready();
    let start = Instant::now();
    let cpu_start = process_cpu();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(agents);
    for (i, mut agent) in connected.into_iter().enumerate() {
        let (url, tls, request) = (urls[i % urls.len()].clone(), tls.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            // Open-loop agents start evenly spread over one interval.
            let mut next = match pace {
                Pace::Closed => start,
                Pace::Every(interval) => start + interval.mul_f64(i as f64 / agents as f64),
            };
            while next < deadline && Instant::now() < deadline {
                let t0 = match pace {
                    Pace::Closed => Instant::now(),
                    Pace::Every(interval) => {
                        // The clock starts at the scheduled time, whatever delays the send:
                        // a late previous answer, or the async worker the load generator
                        // shares with the broker being busy. The timer's own granularity (up
                        // to a millisecond) is counted too: the figures err on the slow side.
                        let scheduled = next;
                        next += interval;
                        tokio::time::sleep_until(scheduled.into()).await;
                        scheduled
                    }
                };
                if agent.is_none() || !keep_alive {
                    agent = RawAgent::connect(&url, &tls).await.ok();
                }
                let Some(a) = agent.as_mut() else {
                    failed += 1;
                    continue;
                };
                if mode == Mode::HandshakeOnly {
                    latencies.push(t0.elapsed());
                    // Closing says so to the broker: its side of the handshake is finished.
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut a.stream).await;
                    agent = None;
                    continue;
                }
                match a.exchange(&request).await {
                    Ok(201) => latencies.push(t0.elapsed()),
                    Ok(_) => failed += 1,
                    Err(_) => {
                        failed += 1;
                        agent = None;
                    }
                }
            }
            // Requests the schedule called for but that could not be sent before the end
            // (the agent was still waiting for an earlier answer) waited at least until then.
            let mut unsent = 0usize;
            if let Pace::Every(interval) = pace {
                while next < deadline {
                    latencies.push(deadline - next);
                    unsent += 1;
                    next += interval;
                }
            }
            (latencies, failed, unsent)
        }));
    }
    let mut stats = Stats {
        ok: 0,
        failed: 0,
        unsent: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        cpu: None,
        cpu_start,
        load_cpu: None,
        load_average: String::new(),
    };
    for task in tasks {
        let (latencies, failed, unsent) = task.await?;
        stats.ok += latencies.len() - unsent;
        stats.failed += failed;
        stats.unsent += unsent;
        stats.latencies.extend(latencies);
    }
    stats.elapsed = start.elapsed();
    stats.load_average = load_average();
    stats.latencies.sort();
    Ok(stats)
}

/// The one-minute load average, from `/proc/loadavg`: how busy the machine was.
pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// User plus system CPU time of this process so far, from `/proc/self/stat`
/// (Linux; clock ticks of 10 ms, the kernel's USER_HZ).
pub(super) fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A load-generating agent: one mTLS keep-alive connection speaking just enough HTTP/1.1 to
/// send a prepared request and read one complete response, so that the load generator (which
/// shares the machine's cores with the broker) costs as little as it can.
pub(super) struct RawAgent {
    pub(super) stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    pub(super) buf: Vec<u8>,
}

impl RawAgent {
    pub(super) async fn connect(url: &str, tls: &ClientTls) -> Result<Self, CliError> {
        let (stream, _) = seb::client::connect_tls(url, tls).await?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` and reads the whole response; returns its status. A granted answer
    /// must carry a token.
    pub(super) async fn exchange(&mut self, request: &[u8]) -> Result<u16, CliError> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(request).await?;
        self.stream.flush().await?;
        self.buf.clear();
        let (head_len, body_len, status) = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| "bad response")?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad status line")?;
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .ok_or("no content-length")?;
                break (end + 4, length, status);
            }
            self.read_more().await?;
        };
        while self.buf.len() < head_len + body_len {
            self.read_more().await?;
        }
        let body = &self.buf[head_len..head_len + body_len];
        if status == 201 && !body.windows(9).any(|w| w == b"\"token\":\"") {
            return Err("a 201 without a token".into());
        }
        Ok(status)
    }

    pub(super) async fn read_more(&mut self) -> Result<(), CliError> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
