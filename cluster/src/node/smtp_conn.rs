//! The SMTP and LMTP edge: a glommio socket on one side, the sans-IO [`SmtpSession`] on the
//! other.
//!
//! A message for several recipients is stored once per recipient, each copy in a fragment of
//! that recipient's mailbox, on the node the cluster places it ([`super::delivery`]). Over SMTP
//! the 250 is sent only after every copy is durable; if any copy fails the client gets 451/452
//! and retries the whole message, so recipients already stored may receive it twice
//! (Porcupine's known duplicate anomaly); never zero times after a 250. Over LMTP each
//! recipient gets its own reply once its copy is durable (or failed), so the MTA retries only
//! the recipients that failed and nobody gets the message twice.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use porcupine_protocols::smtp::{DeliveryOutcome, Dialect, RecipientCheck, SmtpSession, Step, Tls};

use super::conn::{self, Read, SessionClock};
use super::core_context::CoreContext;
use super::metrics::add;
use super::service::StoreError;
use super::tls::ClientStream;

pub async fn serve(
    stream: TcpStream,
    context: Rc<CoreContext>,
    clock: Rc<SessionClock>,
    dialect: Dialect,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut stream = ClientStream::Plain(stream);
    let config = &context.config;
    let mut session = SmtpSession::with_dialect(
        dialect,
        config.smtp_limits.clone(),
        &config.hostname,
        &config.domains,
    );
    match dialect {
        Dialect::Smtp => {
            add(&context.metrics.smtp_sessions, 1);
            session.set_tls(Tls::Offered);
        }
        // The MTA's last hop, on loopback or a private network: no TLS offered.
        Dialect::Lmtp => add(&context.metrics.lmtp_sessions, 1),
    }
    let mut reserved = context.transfer.reservation();
    let mut out = Vec::with_capacity(1024);
    session.greeting(&mut out);
    let mut buf = vec![0u8; 64 << 10];
    let mut stopping = false;
    loop {
        loop {
            match session.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => {
                    conn::flush(&mut stream, &mut out, &clock, |o| {
                        context.metrics.count_smtp_replies(o)
                    })
                    .await;
                    let _ = stream.close().await;
                    return;
                }
                Step::CheckRecipient(mailbox) => {
                    // Flush what is answered so far: a pipelining client waits for nothing, but
                    // a lookup on another core should not hold earlier replies back.
                    let check = check_recipient(
                        &context,
                        &mailbox.canonical(),
                        session.declared_size().unwrap_or(0),
                    )
                    .await;
                    session.recipient_checked(check, &mut out);
                }
                Step::Deliver(envelope) => {
                    let outcomes = deliver(&context, &peer, dialect, &envelope).await;
                    session.delivered_each(&envelope.recipients, &outcomes, &mut out);
                    let _ = context
                        .transfer
                        .cover(&mut reserved, session.buffered_bytes());
                }
                Step::StartTls => {
                    if !conn::flush(&mut stream, &mut out, &clock, |o| {
                        context.metrics.count_smtp_replies(o)
                    })
                    .await
                    {
                        return;
                    }
                    match stream.start_tls(&context.tls).await {
                        Ok(secure) => {
                            stream = secure;
                            add(&context.metrics.tls_handshakes, 1);
                            session.tls_started();
                        }
                        Err(error) => {
                            add(&context.metrics.tls_failures, 1);
                            tracing::debug!(%peer, %error, "STARTTLS handshake failed");
                            return;
                        }
                    }
                }
            }
        }
        if !conn::flush(&mut stream, &mut out, &clock, |o| {
            context.metrics.count_smtp_replies(o)
        })
        .await
        {
            return;
        }
        if stopping && !session.in_data() {
            session.goodbye(&mut out, "shutting down");
            conn::flush(&mut stream, &mut out, &clock, |o| {
                context.metrics.count_smtp_replies(o)
            })
            .await;
            let _ = stream.close().await;
            return;
        }
        match conn::read(&mut stream, &mut buf, &clock).await {
            Read::Bytes(n) => {
                session.push(&buf[..n]);
                // The node's budget for messages in transfer: past it, this one is refused.
                if !context
                    .transfer
                    .cover(&mut reserved, session.buffered_bytes())
                {
                    add(&context.metrics.transfer_refused, 1);
                    session.refuse_for_memory();
                    let _ = context
                        .transfer
                        .cover(&mut reserved, session.buffered_bytes());
                }
            }
            Read::Closed => return, // mid-DATA: nothing was stored
            Read::Stop => stopping = true,
        }
    }
}

/// Whether `user` exists and has room for a message of `size` bytes.
async fn check_recipient(context: &Rc<CoreContext>, user: &str, size: u64) -> RecipientCheck {
    use super::quota::{admit, Admission, Tally};
    match admit(context, user, Tally::one(size)).await {
        Admission::Admitted => RecipientCheck::Local,
        Admission::NoSuchUser => RecipientCheck::Unknown,
        Admission::OverQuota(_) => RecipientCheck::OverQuota,
        Admission::Unavailable => RecipientCheck::Unavailable,
    }
}

/// Each recipient checked again now that the message's size is known (and a user deleted
/// since RCPT is gone): `None` for those it may be stored for, else the outcome to answer.
/// Several recipients are checked at once.
async fn recheck(
    context: &Rc<CoreContext>,
    envelope: &porcupine_protocols::smtp::Envelope,
    size: u64,
) -> Vec<Option<DeliveryOutcome>> {
    let verdict = |check| match check {
        RecipientCheck::Local => None,
        RecipientCheck::Unknown => Some(DeliveryOutcome::NoSuchUser),
        RecipientCheck::OverQuota => Some(DeliveryOutcome::OverQuota),
        RecipientCheck::Unavailable => Some(DeliveryOutcome::Failed),
    };
    if let [recipient] = envelope.recipients.as_slice() {
        return vec![verdict(
            check_recipient(context, &recipient.canonical(), size).await,
        )];
    }
    let tasks: Vec<_> = envelope
        .recipients
        .iter()
        .map(|recipient| {
            let (context, user) = (context.clone(), recipient.canonical());
            glommio::spawn_local(async move { check_recipient(&context, &user, size).await })
        })
        .collect();
    let mut verdicts = Vec::with_capacity(tasks.len());
    for task in tasks {
        verdicts.push(verdict(task.await));
    }
    verdicts
}

/// Stores the message for every recipient; the outcome for each, in the envelope's order.
async fn deliver(
    context: &Rc<CoreContext>,
    peer: &str,
    dialect: Dialect,
    envelope: &porcupine_protocols::smtp::Envelope,
) -> Vec<DeliveryOutcome> {
    let id = context.new_message_id();
    let id_text = format!("{id:032x}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = porcupine_protocols::smtp::received_header(
        &envelope.helo,
        peer,
        &context.config.hostname,
        dialect.received_with(envelope.tls),
        &id_text,
        &porcupine_protocols::date::rfc5322(now),
    );
    let mut message = Vec::with_capacity(header.len() + envelope.data.len());
    message.extend_from_slice(header.as_bytes());
    message.extend_from_slice(&envelope.data);
    let message = Arc::new(message);
    if context.config.discard_bodies {
        // "Infinitely fast disk" (DESIGN.md §8.3): everything but storage is done.
        add(&context.metrics.messages_accepted, 1);
        add(&context.metrics.bytes_accepted, message.len() as u64);
        return vec![DeliveryOutcome::Stored(id_text); envelope.recipients.len()];
    }
    let size = message.len() as u64;
    let mut verdicts = recheck(context, envelope, size).await;
    match (dialect, verdicts.as_slice()) {
        // LMTP answers each recipient.
        (Dialect::Lmtp, _) => {}
        // One recipient: the one reply is theirs.
        (Dialect::Smtp, [Some(refused)]) => return vec![refused.clone()],
        (Dialect::Smtp, _) => {
            // One reply for several recipients, each accepted at RCPT: refusing the message
            // for one would bounce it for all. A mailbox found full only now takes this one
            // message past its limit (as Dovecot's quota grace does); a user deleted since
            // RCPT gets no copy; an unanswered check does not hold the mail back.
            for verdict in &mut verdicts {
                *verdict = match verdict {
                    Some(DeliveryOutcome::NoSuchUser) => {
                        Some(DeliveryOutcome::Stored(id_text.clone()))
                    }
                    _ => None,
                };
            }
        }
    }
    let mut outcomes = Vec::with_capacity(envelope.recipients.len());
    let outcome_of = |result: Result<(), StoreError>| match result {
        Ok(()) => {
            add(&context.metrics.recipients_delivered, 1);
            DeliveryOutcome::Stored(id_text.clone())
        }
        Err(StoreError::NoSpace) => DeliveryOutcome::NoSpace,
        Err(StoreError::Failed | StoreError::Unavailable) => DeliveryOutcome::Failed,
    };
    if let ([recipient], [None]) = (envelope.recipients.as_slice(), verdicts.as_slice()) {
        // The usual case: no task to spawn for one copy.
        let stored =
            super::delivery::deliver(context, &recipient.canonical(), id, message.clone()).await;
        outcomes.push(outcome_of(stored));
    } else {
        // Copies for several recipients are stored concurrently (their shards may differ).
        let mut tasks = Vec::with_capacity(envelope.recipients.len());
        for (recipient, verdict) in envelope.recipients.iter().zip(&verdicts) {
            let context = context.clone();
            let user = recipient.canonical();
            let message = message.clone();
            let refused = verdict.clone();
            tasks.push(glommio::spawn_local(async move {
                match refused {
                    Some(outcome) => Err(outcome),
                    None => Ok(super::delivery::deliver(&context, &user, id, message).await),
                }
            }));
        }
        for task in tasks {
            match task.await {
                Ok(result) => outcomes.push(outcome_of(result)),
                Err(refused) => outcomes.push(refused),
            }
        }
    }
    let stored = |o: &DeliveryOutcome| matches!(o, DeliveryOutcome::Stored(_));
    // Over SMTP a message is accepted only whole; over LMTP each stored copy is an acceptance.
    let accepted = match dialect {
        Dialect::Smtp => outcomes.iter().all(stored),
        Dialect::Lmtp => outcomes.iter().any(stored),
    };
    if accepted {
        add(&context.metrics.messages_accepted, 1);
        add(&context.metrics.bytes_accepted, message.len() as u64);
    }
    outcomes
}
