//! The POP3 edge: a glommio socket on one side, the sans-IO [`Pop3Session`] on the other.
//! The maildrop lock (the user's core on a lone node, the bucket manager in a cluster) is held
//! from login until the connection ends, however it ends; deletions happen only on QUIT, on the
//! nodes holding the messages ([`super::maildrop`]).

use std::rc::Rc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use porcupine_protocols::pop3::{AuthOutcome, MaildropEntry, Pop3Session, Step};

use super::client_start::{self, Start};
use super::conn::{self, Read, SessionClock};
use super::core_calls::ReadScram;
use super::core_context::CoreContext;
use super::maildrop::{self, OpenFailure};
use super::metrics::add;
use super::service::Credential;

pub async fn serve(
    stream: TcpStream,
    context: Rc<CoreContext>,
    clock: Rc<SessionClock>,
    start: Start,
) {
    add(&context.metrics.pop3_sessions, 1);
    let peer = stream.peer_addr().ok();
    let Some((mut stream, tls)) = client_start::open(stream, &context, start, peer, "POP3S").await
    else {
        return;
    };
    let mut session = Pop3Session::new(context.config.pop3_limits.clone());
    session.set_security(tls, client_start::plaintext_policy(&context, peer));
    let mut out = Vec::with_capacity(1024);
    session.greeting(&mut out);
    let mut buf = vec![0u8; 16 << 10];
    let mut locked: Option<maildrop::Maildrop> = None;
    let mut proofs_counted = 0;
    let mut errors_counted = 0;
    let mut count_errors = |session: &Pop3Session| {
        add(
            &context.metrics.pop3_errors,
            session.errors_sent() - errors_counted,
        );
        errors_counted = session.errors_sent();
    };
    'session: loop {
        loop {
            match session.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => break 'session,
                Step::StartTls => {
                    count_errors(&session);
                    if !conn::flush(&mut stream, &mut out, &clock, |_| {}).await {
                        break 'session;
                    }
                    match stream.start_tls(&context.tls).await {
                        Ok(secure) => {
                            stream = secure;
                            add(&context.metrics.tls_handshakes, 1);
                            session.tls_started();
                        }
                        Err(error) => {
                            add(&context.metrics.tls_failures, 1);
                            tracing::debug!(?peer, %error, "STLS handshake failed");
                            return;
                        }
                    }
                }
                Step::ScramCredentials { user } => {
                    if let Some(ip) = peer.map(|p| p.ip()) {
                        let wait = context.clients.login_penalty(ip);
                        if !wait.is_zero() {
                            glommio::timer::sleep(wait).await;
                        }
                    }
                    let read = ReadScram {
                        user: user.to_lowercase(),
                    };
                    let stored = context.call(read).await.unwrap_or(None);
                    let mut random = [0u8; 32];
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
                    session.scram_credentials(stored, &random, &mut out);
                }
                step @ (Step::Authenticate { .. } | Step::Open { .. }) => {
                    let (user, credential) = match step {
                        Step::Authenticate { user, password } => {
                            (user, Credential::Password(password))
                        }
                        Step::Open { user } => (user, Credential::Proven),
                        _ => continue,
                    };
                    let user = user.to_lowercase();
                    // An address that failed recently waits before each try (auth penalty).
                    if let Some(ip) = peer.map(|p| p.ip()) {
                        let wait = context.clients.login_penalty(ip);
                        if !wait.is_zero() {
                            glommio::timer::sleep(wait).await;
                        }
                    }
                    let opened = maildrop::open(&context, &user, &credential).await;
                    if let Some(ip) = peer.map(|p| p.ip()) {
                        match &opened {
                            Err(OpenFailure::BadCredentials) => context.clients.login_failed(ip),
                            Ok(_) => context.clients.login_succeeded(ip),
                            Err(_) => {}
                        }
                    }
                    let outcome = match opened {
                        Ok(maildrop) => {
                            let entries = maildrop
                                .messages
                                .iter()
                                .map(|m| MaildropEntry {
                                    uid: format!("{:032x}", m.id),
                                    size: m.size,
                                })
                                .collect();
                            locked = Some(maildrop);
                            AuthOutcome::Ok(entries)
                        }
                        Err(OpenFailure::BadCredentials) => AuthOutcome::BadCredentials,
                        Err(OpenFailure::InUse) => AuthOutcome::InUse,
                        Err(OpenFailure::Unavailable) => AuthOutcome::Unavailable,
                    };
                    session.authenticated(outcome, &mut out);
                }
                Step::Fetch { index, top } => {
                    let message = match &locked {
                        Some(maildrop) => maildrop::fetch(&context, maildrop, index).await,
                        None => None,
                    };
                    if message.is_some() {
                        add(&context.metrics.messages_retrieved, 1);
                    }
                    session.fetched(index, top, message.as_deref(), &mut out);
                }
                Step::Commit { delete } => {
                    let ok = match &locked {
                        Some(maildrop) => {
                            let result = maildrop::delete(&context, maildrop, &delete).await;
                            if result.is_ok() {
                                add(&context.metrics.messages_deleted, delete.len() as u64);
                            }
                            result.is_ok()
                        }
                        None => true,
                    };
                    session.committed(ok, &mut out);
                }
            }
        }
        count_errors(&session);
        if let Some(ip) = peer.map(|p| p.ip()) {
            for _ in proofs_counted..session.proofs_failed() {
                context.clients.login_failed(ip);
            }
        }
        proofs_counted = session.proofs_failed();
        if !conn::flush(&mut stream, &mut out, &clock, |_| {}).await {
            break;
        }
        match conn::read(&mut stream, &mut buf, &clock).await {
            Read::Bytes(n) => session.push(&buf[..n]),
            Read::Closed => break,
            Read::Stop => {
                out.extend_from_slice(b"-ERR [SYS/TEMP] server shutting down, nothing deleted\r\n");
                add(&context.metrics.pop3_errors, 1);
                break;
            }
        }
    }
    // Unlock before the last reply, so a client that reconnects at once finds the maildrop free.
    if let Some(maildrop) = &locked {
        maildrop::close(&context, maildrop).await;
    }
    count_errors(&session);
    conn::flush(&mut stream, &mut out, &clock, |_| {}).await;
    let _ = stream.close().await;
}
