//! The SMTP edge: a glommio socket on one side, the sans-IO [`SmtpSession`] on the other.
//!
//! A message for several recipients is stored once per recipient, each copy in a fragment of
//! that recipient's mailbox, on the node the cluster places it ([`super::delivery`]); the 250 is
//! sent only after every copy is durable. If any copy fails the client gets 451/452 and retries
//! the whole message, so recipients already stored may receive it twice (Porcupine's known
//! duplicate anomaly); never zero times after a 250.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use porcupine_protocols::smtp::{DeliveryOutcome, RecipientCheck, SmtpSession, Step, Tls};

use super::conn::{self, Read, SessionClock};
use super::core_context::CoreContext;
use super::metrics::add;
use super::service::StoreError;
use super::tls::ClientStream;

pub async fn serve(stream: TcpStream, context: Rc<CoreContext>, clock: Rc<SessionClock>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut stream = ClientStream::Plain(stream);
    let config = &context.config;
    add(&context.metrics.smtp_sessions, 1);
    let mut session = SmtpSession::new(
        config.smtp_limits.clone(),
        &config.hostname,
        &config.domains,
    );
    session.set_tls(Tls::Offered);
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
                    let check = match context.user_exists(&mailbox.canonical()).await {
                        Ok(true) => RecipientCheck::Local,
                        Ok(false) => RecipientCheck::Unknown,
                        Err(_) => RecipientCheck::Unavailable,
                    };
                    session.recipient_checked(check, &mut out);
                }
                Step::Deliver(envelope) => {
                    let outcome = deliver(&context, &peer, envelope).await;
                    session.delivered(outcome, &mut out);
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

async fn deliver(
    context: &Rc<CoreContext>,
    peer: &str,
    envelope: porcupine_protocols::smtp::Envelope,
) -> DeliveryOutcome {
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
        envelope.tls,
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
        return DeliveryOutcome::Stored(format!("{id:032x}"));
    }
    let mut outcome = DeliveryOutcome::Stored(id_text);
    let mut note = |result: Result<(), StoreError>| match result {
        Ok(()) => add(&context.metrics.recipients_delivered, 1),
        Err(StoreError::NoSpace) => outcome = DeliveryOutcome::NoSpace,
        Err(StoreError::Failed | StoreError::Unavailable) => {
            if outcome != DeliveryOutcome::NoSpace {
                outcome = DeliveryOutcome::Failed;
            }
        }
    };
    if let [recipient] = envelope.recipients.as_slice() {
        // The usual case: no task to spawn for one copy.
        note(super::delivery::deliver(context, &recipient.canonical(), id, message.clone()).await);
    } else {
        // Copies for several recipients are stored concurrently (their shards may differ).
        let mut tasks = Vec::with_capacity(envelope.recipients.len());
        for recipient in &envelope.recipients {
            let context = context.clone();
            let user = recipient.canonical();
            let message = message.clone();
            tasks.push(glommio::spawn_local(async move {
                super::delivery::deliver(&context, &user, id, message).await
            }));
        }
        for task in tasks {
            note(task.await);
        }
    }
    if matches!(outcome, DeliveryOutcome::Stored(_)) {
        add(&context.metrics.messages_accepted, 1);
        add(&context.metrics.bytes_accepted, message.len() as u64);
    }
    outcome
}
