//! The email outbox worker: delivers what security events wrote to `email_outbox`, with the customer's
//! anti-phishing code, retrying transient failures with backoff and giving up on permanent ones. Several nodes may run
//! it: each claims a batch with a lease, so a message is not sent twice at the same time.

use std::sync::Arc;
use std::time::Duration;

use rampart_notify::Mailer;

use crate::AppState;
use crate::identity::{customer_email, decrypt_field, open_payload};

/// How long a claimed email is reserved for the worker that claimed it: longer than a whole batch takes even when
/// every send waits out a 60-second SMTP timeout (the default is 30), so that another node does not send the same
/// email meanwhile; and short enough that a crashed worker's emails go out from another node within minutes.
const LEASE_NS: u64 = 5 * 60 * 1_000_000_000;
/// Emails claimed per round.
const BATCH: u32 = 4;

/// Delivers due emails every `interval` through `mailer`, until `shutdown` resolves. Does nothing while sealed (the
/// payloads and addresses are encrypted).
pub async fn run_outbox_worker(
    state: AppState,
    mailer: Arc<dyn Mailer>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if state.keyring().is_err() {
            continue;
        }
        loop {
            match deliver_outbox_once(&state, mailer.as_ref()).await {
                Ok(n) if n == BATCH as usize => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "email outbox round failed");
                    break;
                }
            }
        }
    }
}

/// Claims and delivers one batch of due emails; answers how many were claimed (the demo and tests call it directly).
pub async fn deliver_outbox_once(state: &AppState, mailer: &dyn Mailer) -> Result<usize, String> {
    let keyring = state.keyring().map_err(|e| e.code().to_owned())?;
    let now = state.now_ns();
    let claimed = state.store().claim_outbox(now, LEASE_NS, BATCH).await.map_err(|e| e.to_string())?;
    let from = state.identity().email_from.clone();
    for email in &claimed {
        let outcome = async {
            let payload = open_payload(&keyring, &email.id, &email.payload).ok_or((None, "payload does not open"))?;
            let customer = state
                .store()
                .customer_by_id(email.customer_id)
                .await
                .map_err(|_| (Some(rampart_notify::backoff_ns(email.attempts)), "database"))?
                .ok_or((None, "no such customer"))?;
            // The code goes only to the account's own address: a confirmation sent to a new, unproven address (an email
            // change) must not hand it to whoever typed that address.
            let (to, verified) = match payload.to {
                Some(to) => {
                    let own = customer_email(state, &customer).await.map_err(|_| (None, "address does not open"))?;
                    let verified = to == own;
                    (to, verified || !matches!(payload.notification, rampart_notify::Notification::EmailVerification { .. }))
                }
                None => (customer_email(state, &customer).await.map_err(|_| (None, "address does not open"))?, true),
            };
            let code = match customer.anti_phishing_code.as_ref().filter(|_| verified) {
                Some(ct) => Some(
                    String::from_utf8_lossy(
                        &decrypt_field(state, &customer, "anti_phishing_code", ct)
                            .await
                            .map_err(|_| (None, "code does not open"))?,
                    )
                    .into_owned(),
                ),
                None => None,
            };
            let message = rampart_notify::render_email(&payload.notification, code.as_deref(), &to, email.created_at_ns);
            mailer.send(&from, &message).await.map_err(|e| {
                let attempts = email.attempts + 1;
                let retry =
                    (!e.is_permanent() && attempts < rampart_notify::DELIVERY_ATTEMPTS_MAX)
                        .then(|| state.now_ns().saturating_add(rampart_notify::backoff_ns(attempts)));
                tracing::warn!(kind = %email.kind, attempts, permanent = e.is_permanent(), error = %e, "email not delivered");
                (retry, "delivery failed")
            })
        }
        .await;
        match &outcome {
            Ok(()) => metrics::counter!("email_outbox_sent_total", "kind" => email.kind.clone()).increment(1),
            Err((None, _)) => metrics::counter!("email_outbox_failed_total", "kind" => email.kind.clone()).increment(1),
            Err(_) => metrics::counter!("email_outbox_retried_total").increment(1),
        }
        state.store().outbox_attempted(&email.id, outcome, state.now_ns()).await.map_err(|e| e.to_string())?;
    }
    Ok(claimed.len())
}
