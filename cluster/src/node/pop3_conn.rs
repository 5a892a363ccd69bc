//! The POP3 edge: a glommio socket on one side, the sans-IO [`Pop3Session`] on the other.
//! The maildrop lock is held by the user's core from login until the connection ends, however
//! it ends; deletions happen only on QUIT.

use std::rc::Rc;
use std::sync::Arc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use porcupine_protocols::pop3::{AuthOutcome, MaildropEntry, Pop3Session, Step};

use super::conn::{self, Read, SessionClock};
use super::metrics::add;
use super::service::Login;
use super::NodeContext;

pub async fn serve(mut stream: TcpStream, context: Arc<NodeContext>, clock: Rc<SessionClock>) {
    add(&context.metrics.pop3_sessions, 1);
    let mut session = Pop3Session::new(context.config.pop3_limits.clone());
    let mut out = Vec::with_capacity(1024);
    session.greeting(&mut out);
    let mut buf = vec![0u8; 16 << 10];
    let mut locked: Option<(String, Vec<u128>)> = None;
    'session: loop {
        loop {
            match session.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => break 'session,
                Step::Authenticate { user, password } => {
                    let user = user.to_lowercase();
                    let outcome = match context.router.login(&user, &password).await {
                        Login::Ok(messages) => {
                            let entries = messages
                                .iter()
                                .map(|(id, size)| MaildropEntry {
                                    uid: format!("{id:032x}"),
                                    size: *size,
                                })
                                .collect();
                            locked = Some((user, messages.into_iter().map(|(id, _)| id).collect()));
                            AuthOutcome::Ok(entries)
                        }
                        Login::BadCredentials => AuthOutcome::BadCredentials,
                        Login::InUse => AuthOutcome::InUse,
                        Login::Unavailable => AuthOutcome::Unavailable,
                    };
                    session.authenticated(outcome, &mut out);
                }
                Step::Fetch { index, top } => {
                    let message = match &locked {
                        Some((user, ids)) => match ids.get(index) {
                            Some(id) => context.router.fetch(user, *id).await.ok(),
                            None => None,
                        },
                        None => None,
                    };
                    if message.is_some() {
                        add(&context.metrics.messages_retrieved, 1);
                    }
                    session.fetched(index, top, message.as_deref(), &mut out);
                }
                Step::Commit { delete } => {
                    let ok = match &locked {
                        Some((user, ids)) => {
                            let doomed: Vec<u128> =
                                delete.iter().filter_map(|i| ids.get(*i).copied()).collect();
                            let count = doomed.len() as u64;
                            let result = context.router.delete(user, doomed).await;
                            if result.is_ok() {
                                add(&context.metrics.messages_deleted, count);
                            }
                            result.is_ok()
                        }
                        None => true,
                    };
                    session.committed(ok, &mut out);
                }
            }
        }
        if !flush(&mut stream, &mut out, &context, &clock).await {
            break;
        }
        match conn::read(&mut stream, &mut buf, &clock).await {
            Read::Bytes(n) => session.push(&buf[..n]),
            Read::Closed => break,
            Read::Stop => {
                out.extend_from_slice(b"-ERR [SYS/TEMP] server shutting down, nothing deleted\r\n");
                break;
            }
        }
    }
    // Unlock before the last reply, so a client that reconnects at once finds the maildrop free.
    if let Some((user, _)) = locked {
        context.router.unlock(&user).await;
    }
    flush(&mut stream, &mut out, &context, &clock).await;
    let _ = stream.close().await;
}

async fn flush(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    context: &NodeContext,
    clock: &SessionClock,
) -> bool {
    if out.is_empty() {
        return true;
    }
    clock.touch();
    context.metrics.count_pop3_errors(out);
    let ok = stream.write_all(out).await.is_ok() && stream.flush().await.is_ok();
    out.clear();
    ok
}
