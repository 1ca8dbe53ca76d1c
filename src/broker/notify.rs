//! Notifications of new pending requests: a JSON POST to `[approvals] webhook_url` with the
//! request summary and a plain, link-free line of text a chat tool can show.
//!
//! Sending never blocks or fails issuance: summaries go into a bounded queue that one thread
//! (`seb-webhook`) drains, retrying each with exponential backoff; a full queue drops the
//! notification with a warning. The body never carries a secret: no token, signature, key or
//! PIN, only what approvers are shown anyway (`seb pending`).

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use serde_json::{json, Value};

use crate::store::{ExecutionRecord, PendingApproval};
use crate::time::unix;

/// Notifications waiting to be sent; more are dropped (with a warning).
const QUEUE: usize = 256;
/// Attempts per notification.
const ATTEMPTS: u32 = 6;
/// First retry delay; doubled after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Time limit of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The webhook sender (or nothing, when no webhook is configured).
#[derive(Debug, Default)]
pub struct Notifier {
    queue: Option<SyncSender<Value>>,
}

impl Notifier {
    /// Starts the sender thread for `url` (`http://host:port/path`, checked by the
    /// configuration), or a notifier that does nothing.
    pub fn start(url: Option<&str>) -> Self {
        let Some(url) = url else {
            return Self::default();
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let url = url.to_owned();
        let spawned = std::thread::Builder::new()
            .name("seb-webhook".into())
            .spawn(move || send_loop(&url, &rx));
        match spawned {
            Ok(_) => Self { queue: Some(tx) },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the webhook thread; no notifications");
                Self::default()
            }
        }
    }

    /// The notification for a new pending request (built before the record moves into the
    /// store), or `None` without a webhook.
    pub fn summary(&self, record: &ExecutionRecord, pending: &PendingApproval) -> Option<Value> {
        self.queue.as_ref()?;
        let params: Value = serde_json::from_str(&record.params).unwrap_or(Value::Null);
        let text = format!(
            "seb: {requester} asks to run {operation} on {resource}. It needs {required} \
             approval(s) from group {group} before {expires} (Unix time). Request id {id}: review \
             it with `seb pending` and decide with `seb approve {id}` or `seb approve --reject {id}`.",
            requester = record.agent_subject,
            operation = record.operation,
            resource = record.resource,
            required = record.approvals_required,
            group = pending.group,
            expires = unix(pending.expires_at),
            id = record.request_id,
        );
        Some(json!({
            "event": "approval_requested",
            "request_id": record.request_id,
            "operation": record.operation,
            "resource": record.resource,
            "params": params,
            "request_digest": record.request_digest,
            "requester": {"subject": record.agent_subject, "x5t#S256": record.agent},
            "justification": pending.justification,
            "approvals_required": record.approvals_required,
            "approval_group": pending.group,
            "expires_at": unix(pending.expires_at),
            "text": text,
        }))
    }

    /// Queues a notification without waiting.
    pub fn notify(&self, summary: Option<Value>) {
        let (Some(queue), Some(summary)) = (&self.queue, summary) else {
            return;
        };
        match queue.try_send(summary) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("webhook queue full; a pending-request notification was dropped")
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("webhook thread stopped; a pending-request notification was dropped")
            }
        }
    }
}

fn send_loop(url: &str, rx: &Receiver<Value>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the webhook runtime; no notifications");
            return;
        }
    };
    while let Ok(summary) = rx.recv() {
        let body = summary.to_string();
        let mut delay = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            // Behind a failing webhook a notification may wait for minutes: one whose request
            // can no longer be approved is not worth sending.
            let expires = summary["expires_at"].as_u64().unwrap_or(u64::MAX);
            if unix(std::time::SystemTime::now()) >= expires {
                tracing::warn!(
                    request_id = summary["request_id"].as_str().unwrap_or_default(),
                    "webhook notification dropped: its request expired before it could be sent"
                );
                break;
            }
            let sent = runtime.block_on(async {
                tokio::time::timeout(ATTEMPT_TIMEOUT, post(url, body.clone())).await
            });
            match sent {
                Ok(Ok(status)) if (200..300).contains(&status) => break,
                Ok(Ok(status)) => {
                    tracing::warn!(status, attempt, "webhook answered with an error status")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, attempt, "webhook POST failed"),
                Err(_) => tracing::warn!(attempt, "webhook POST timed out"),
            }
            if attempt == ATTEMPTS {
                tracing::error!("webhook notification given up after {ATTEMPTS} attempts");
            } else {
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
    }
}

/// One POST over plain HTTP/1.1; returns the status.
async fn post(url: &str, body: String) -> Result<u16, String> {
    if !url.starts_with("http://") {
        return Err("webhook_url is not http://".into());
    }
    crate::client::plain_http_json("POST", url, body.into_bytes(), "seb-webhook")
        .await
        .map(|(status, _)| status)
}
