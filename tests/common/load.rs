//! Closed-loop load for the fault tests: one thread per agent identity, each with its own
//! keep-alive mTLS connection, asking for a token again as soon as it has an answer and
//! reconnecting after a transport error (a killed broker, a dropped connection). Every answer
//! is recorded with when it was asked, so a test can tell what happened before, during and
//! after a fault.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seb::client::{Client, ClientTls};

/// One request's fate.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Which agent asked (index into the identities given to [`Load::start`]).
    pub agent: usize,
    /// When it was sent.
    pub sent: Instant,
    /// When the answer (or the transport error) came.
    pub done: Instant,
    /// HTTP status; 0 for a transport error (refused, reset, killed mid-request).
    pub status: u16,
    /// The error code of a refusal (`hsm_unavailable`, ...), or "" .
    pub code: String,
    /// The token of a 201.
    pub token: Option<String>,
}

/// Agents asking for tokens until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts one agent per `tls`, each posting `body` to `/v1/executions` at `url`.
    pub fn start(url: &str, tls: Vec<ClientTls>, body: serde_json::Value) -> Self {
        Self::paced(url, tls, body, Duration::ZERO)
    }

    /// Like [`Load::start`], but each agent sends at most one request every `interval` (an
    /// agent that asks when it needs a token, not as fast as it can).
    pub fn paced(
        url: &str,
        tls: Vec<ClientTls>,
        body: serde_json::Value,
        interval: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let workers = tls
            .into_iter()
            .enumerate()
            .map(|(agent, tls)| {
                let (url, body, stop, outcomes) =
                    (url.to_owned(), body.clone(), stop.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    super::runtime()
                        .block_on(agent_loop(agent, url, tls, body, interval, stop, outcomes))
                })
            })
            .collect();
        Self {
            stop,
            outcomes,
            workers,
        }
    }

    /// Everything answered so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Stops the agents and returns everything that was answered.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.halt();
        self.outcomes()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn agent_loop(
    agent: usize,
    url: String,
    tls: ClientTls,
    body: serde_json::Value,
    interval: Duration,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
) {
    let mut client: Option<Client> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if !interval.is_zero() {
            tokio::time::sleep_until(next.into()).await;
            next += interval;
        }
        let sent = Instant::now();
        if client.is_none() {
            match tokio::time::timeout(Duration::from_secs(10), Client::connect(&url, &tls)).await {
                Ok(Ok(c)) => client = Some(c),
                _ => {
                    record(&outcomes, agent, sent, 0, "connect", None);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            c.post_json("/v1/executions", &body),
        )
        .await;
        match answer {
            Ok(Ok(r)) => {
                let code = r.body["error"]["code"].as_str().unwrap_or("").to_owned();
                let token = (r.status == 201)
                    .then(|| r.body["token"].as_str().map(str::to_owned))
                    .flatten();
                let status = r.status;
                record(&outcomes, agent, sent, status, &code, token);
                if status != 201 {
                    // A refused agent backs off a little, as a client would, rather than
                    // spin on the broker's per-certificate limit.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            _ => {
                client = None;
                record(&outcomes, agent, sent, 0, "transport", None);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn record(
    outcomes: &Mutex<Vec<Outcome>>,
    agent: usize,
    sent: Instant,
    status: u16,
    code: &str,
    token: Option<String>,
) {
    outcomes.lock().unwrap().push(Outcome {
        agent,
        sent,
        done: Instant::now(),
        status,
        code: code.to_owned(),
        token,
    });
}

/// Requests by status and code, for the report: `[("201", n), ("503 hsm_unavailable", m)]`.
pub fn tally(outcomes: &[Outcome]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for o in outcomes {
        let key = match (o.status, o.code.as_str()) {
            (0, code) => format!("transport ({code})"),
            (s, "") => s.to_string(),
            (s, code) => format!("{s} {code}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// The claims of a JWS token (its middle part), unverified: for looking up its audit entry.
pub fn claims(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap()
}
