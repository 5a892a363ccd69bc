//! The POP3 edge: a glommio socket on one side, the sans-IO [`Pop3Session`] on the other.
//! The maildrop lock (the user's core on a lone node, the bucket manager in a cluster) is held
//! from login until the connection ends, however it ends; deletions happen only on QUIT, on the
//! nodes holding the messages ([`super::proxy`]).

use std::rc::Rc;
use std::sync::Arc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use porcupine_protocols::pop3::{AuthOutcome, MaildropEntry, Pop3Session, Step};

use super::conn::{self, Read, SessionClock};
use super::metrics::add;
use super::proxy::{self, OpenFailure};
use super::NodeContext;

pub async fn serve(mut stream: TcpStream, context: Arc<NodeContext>, clock: Rc<SessionClock>) {
    add(&context.metrics.pop3_sessions, 1);
    let mut session = Pop3Session::new(context.config.pop3_limits.clone());
    let mut out = Vec::with_capacity(1024);
    session.greeting(&mut out);
    let mut buf = vec![0u8; 16 << 10];
    let mut locked: Option<proxy::Maildrop> = None;
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
                Step::Authenticate { user, password } => {
                    let user = user.to_lowercase();
                    let outcome = match proxy::open(&context, &user, &password).await {
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
                        Some(maildrop) => proxy::fetch(&context, maildrop, index).await,
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
                            let result = proxy::delete(&context, maildrop, &delete).await;
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
        proxy::close(&context, maildrop).await;
    }
    count_errors(&session);
    conn::flush(&mut stream, &mut out, &clock, |_| {}).await;
    let _ = stream.close().await;
}
