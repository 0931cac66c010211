//! Run summaries by mail (SPEC section 8).
//!
//! Every finished run with `[notify]` is written as an RFC 5322 message to
//! `<store>/_outbox/<run_id>.eml`, always. With `smtp` set, it is also sent (through the
//! `lettre` crate; credentials from IGAFLOW_SMTP_USER / IGAFLOW_SMTP_PASSWORD). A mail server
//! that is down never fails the run: the failure is logged, a marker
//! `_outbox/unsent/<run_id>` is left, and the next run sends what is still unsent first.

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{Notify, Pipeline};
use crate::error::{Error, Result};
use crate::jobs::RunReport;
use crate::store::Store;

const OUTBOX: &str = "_outbox";

/// Writes the run's summary to the outbox and sends it (and earlier unsent ones) when SMTP is
/// configured. Never fails: problems are logged.
pub async fn after_run(pipeline: &Pipeline, store: &Store, report: &RunReport) {
    let Some(notify) = &pipeline.notify else {
        return;
    };
    if let Err(e) = deliver(pipeline, notify, store, report).await {
        tracing::warn!(error = %e, "run summary not delivered; it stays in the outbox and is retried on the next run");
    }
}

async fn deliver(
    pipeline: &Pipeline,
    notify: &Notify,
    store: &Store,
    report: &RunReport,
) -> Result<()> {
    let message = summary(pipeline, notify, report)?;
    let bytes = message.formatted();
    store
        .put_file(&format!("{OUTBOX}/{}.eml", report.run_id), bytes.clone())
        .await?;
    let Some(url) = &notify.smtp else {
        return Ok(());
    };
    store
        .put_file(&format!("{OUTBOX}/unsent/{}", report.run_id), Vec::new())
        .await?;
    let transport = transport(url)?;
    // Oldest first: what an earlier run could not send, then this run.
    let mut pending = store.list_files(&format!("{OUTBOX}/unsent/")).await?;
    pending.sort();
    for marker in pending {
        let run_id = marker.rsplit('/').next().unwrap_or_default().to_string();
        let Some(eml) = store.read_file(&format!("{OUTBOX}/{run_id}.eml")).await? else {
            store.delete_file(&marker).await?;
            continue;
        };
        let envelope = message.envelope().clone();
        transport
            .send_raw(&envelope, &eml)
            .await
            .map_err(|e| Error::TaskFailed(format!("SMTP {url}: {e}")))?;
        store.delete_file(&marker).await?;
        tracing::info!(run_id = %run_id, "run summary sent");
    }
    Ok(())
}

/// Whether `url` names a server to send through (a host), as [`transport`] reads it.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no server host; write smtp://HOST[:PORT]".into());
    }
    AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn transport(url: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| Error::Usage(format!("[notify] smtp = \"{url}\": {e}")))?;
    if let (Ok(user), Ok(password)) = (
        std::env::var("IGAFLOW_SMTP_USER"),
        std::env::var("IGAFLOW_SMTP_PASSWORD"),
    ) {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user, password,
        ));
    }
    Ok(builder
        .timeout(Some(std::time::Duration::from_secs(10)))
        .build())
}

/// The summary: job, status, the task table with counts and messages (orders per connector
/// are in the orders task's message).
fn summary(pipeline: &Pipeline, notify: &Notify, r: &RunReport) -> Result<Message> {
    let mailbox = |a: &str| -> Result<Mailbox> {
        a.parse::<Mailbox>()
            .map_err(|e| Error::Usage(format!("[notify]: `{a}`: {e}")))
    };
    let mut body = format!(
        "Pipeline: {}\nJob: {}\nRun: {}\nStatus: {}\nStarted: {}\nEnded: {}\n\n",
        pipeline.name,
        r.job,
        r.run_id,
        r.status,
        r.started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        r.ended_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    body.push_str(&format!(
        "{:<24} {:<10} {:>8} {:>10}  message\n",
        "task", "status", "seconds", "changes"
    ));
    for t in &r.tasks {
        body.push_str(&format!(
            "{:<24} {:<10} {:>8.2} {:>10}  {}\n",
            t.name,
            t.outcome.status.name(),
            t.seconds,
            t.outcome.changes,
            t.outcome.message.replace('\n', " ")
        ));
    }
    let mut builder = Message::builder()
        .from(mailbox(&notify.from)?)
        .subject(format!(
            "igaflow {} · {} · {}",
            pipeline.name, r.job, r.status
        ))
        .header(ContentType::TEXT_PLAIN);
    for to in &notify.to {
        builder = builder.to(mailbox(to)?);
    }
    builder
        .body(body)
        .map_err(|e| Error::Usage(format!("[notify]: {e}")))
}
