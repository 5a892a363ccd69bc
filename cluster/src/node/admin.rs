//! The admin endpoint: a small HTTP/1.1 server on loopback (one request per connection).
//!
//! | method | path            | body                                   | answer |
//! |--------|-----------------|----------------------------------------|--------|
//! | GET    | `/status`       |                                        | JSON: node, epoch, members (with loads), placement, shards, users |
//! | GET    | `/metrics`      |                                        | Prometheus text |
//! | GET    | `/users`        |                                        | one address per line |
//! | POST   | `/users`        | `EMAIL\nPASSWORD`                      | 201, 409 if it exists, 400 if invalid |
//! | POST   | `/users/import` | lines `EMAIL PASSWORD` (`#` comments)  | JSON counts |
//! | POST   | `/users/bulk`   | JSON `{count, prefix, domain, password}` | JSON counts; users `PREFIX<n>@DOMAIN`, n from 1; one hash shared by all |
//!
//! Every request must name this node in `Host`, and every one but `GET /metrics` must carry
//! the admin token ([`super::admin_auth`]): 421 and 401 otherwise, with nothing changed.
//! Password hashing runs on glommio's blocking threads, never on a serving core.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::admin_auth::{self, Refusal};
use super::clock::now_ms;
use super::core_calls::{ListUsers, PutProfile, ReadProfile, RemovedAt, ShardReports};
use super::core_context::CoreContext;
use super::metrics::NodeMetrics;
use super::service::StoreError;
use super::status::{
    AckName, Buckets, DiskStatus, EngineStatus, EpochInfo, MemberStatus, NodeInfo, PlacementName,
    PlacementStatus, ReplicationStatus, ShardReport, Status,
};
use super::tls::ClientStream;
use super::users;

const HEAD_BYTES_MAX: usize = 16 << 10;
/// An import of a million users is about 40 MB.
pub const BODY_BYTES_MAX: usize = 64 << 20;
/// Users one bulk request may create.
pub const BULK_COUNT_MAX: u64 = 10_000_000;
/// Profile writes in flight during bulk creation.
const BULK_PARALLELISM: usize = 1024;

struct Request {
    method: String,
    path: String,
    host: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn text(status: u16, body: impl Into<String>) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into().into_bytes(),
    }
}

fn json(status: u16, value: &impl serde::Serialize) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(value).unwrap_or_default(),
    }
}

pub async fn serve(stream: TcpStream, context: Rc<CoreContext>) {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    // Off loopback the endpoint speaks only HTTPS (the node refuses to start otherwise).
    let mut stream = if context.config.admin_public {
        match ClientStream::Plain(stream).start_tls(&context.tls).await {
            Ok(secure) => secure,
            Err(error) => {
                tracing::debug!(%error, "admin TLS handshake failed");
                return;
            }
        }
    } else {
        ClientStream::Plain(stream)
    };
    let response = match read_request(&mut stream).await {
        Ok(request) => {
            let path = request.path.split('?').next().unwrap_or("");
            match admin_auth::check(
                &request.method,
                path,
                request.host.as_deref(),
                request.authorization.as_deref(),
                &context.admin_hosts,
                &context.admin_token,
            ) {
                Ok(()) => route(request, &context).await,
                Err(Refusal::StrangeHost) => text(
                    421,
                    "the Host header does not name this node's admin endpoint\n",
                ),
                Err(Refusal::Unauthorized) => text(
                    401,
                    "give the admin token: Authorization: Bearer <the token in the node's \
                     admin.token file>\n",
                ),
            }
        }
        Err(response) => response,
    };
    let reason = match response.status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Payload Too Large",
        421 => "Misdirected Request",
        _ => "Error",
    };
    let challenge = if response.status == 401 {
        "WWW-Authenticate: Bearer realm=\"porcupine\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&response.body).await;
    let _ = stream.flush().await;
    let _ = stream.close().await;
}

/// A request's head, parsed ([`parse_head`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub authorization: Option<String>,
    pub content_length: usize,
}

/// Parses a request head (the bytes before the blank line): the request line and the headers
/// this endpoint reads. Errors are the 400 / 413 text.
pub fn parse_head(head: &[u8]) -> Result<Head, (u16, &'static str)> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let path = request_line.next().unwrap_or("").to_owned();
    let mut content_length = 0usize;
    let (mut host, mut authorization) = (None, None);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value
                    .trim()
                    .parse()
                    .map_err(|_| (400, "bad Content-Length\n"))?;
            } else if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return Err((400, "more than one Host\n"));
                }
                host = Some(value.trim().to_owned());
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    if content_length > BODY_BYTES_MAX {
        return Err((413, "body too large\n"));
    }
    Ok(Head {
        method,
        path,
        host,
        authorization,
        content_length,
    })
}

async fn read_request(stream: &mut ClientStream) -> Result<Request, Response> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if data.len() > HEAD_BYTES_MAX {
            return Err(text(413, "request head too large\n"));
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(text(400, "incomplete request\n")),
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = parse_head(&data[..head_end]).map_err(|(status, why)| text(status, why))?;
    let length = head.content_length;
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(text(400, "incomplete body\n")),
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body.truncate(length);
    Ok(Request {
        method: head.method,
        path: head.path,
        host: head.host,
        authorization: head.authorization,
        body,
    })
}

async fn route(request: Request, context: &Rc<CoreContext>) -> Response {
    let path = request.path.split('?').next().unwrap_or("");
    match (request.method.as_str(), path) {
        ("GET", "/status") => json(200, &status(context).await),
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: super::metrics_text::CONTENT_TYPE,
            body: metrics(context).await.into_bytes(),
        },
        ("GET", "/users") => {
            let mut users: Vec<String> = context.call_each(ListUsers).await;
            users.sort();
            let mut body = users.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            text(200, body)
        }
        ("POST", "/users") => {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            let (email, password) = body.split_once('\n').unwrap_or((body.as_str(), ""));
            let password = password.strip_suffix('\n').unwrap_or(password);
            match add_user(context, email.trim(), password, None).await {
                Ok(()) => text(201, format!("created {}\n", email.trim().to_lowercase())),
                Err((status, message)) => text(status, message),
            }
        }
        ("POST", "/users/password") => {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            let (email, password) = body.split_once('\n').unwrap_or((body.as_str(), ""));
            let password = password.strip_suffix('\n').unwrap_or(password);
            match set_password(context, email.trim(), password).await {
                Ok(()) => text(
                    200,
                    format!("password changed for {}\n", email.trim().to_lowercase()),
                ),
                Err((status, message)) => text(status, message),
            }
        }
        ("POST", "/users/messages") => {
            let email = String::from_utf8_lossy(&request.body).trim().to_lowercase();
            transfer_answer(super::mail_transfer::list(context, &email).await, |list| {
                json(200, &list)
            })
        }
        ("POST", "/users/message") => {
            // `user id holder,holder,…`
            let body = String::from_utf8_lossy(&request.body).into_owned();
            let mut words = body.split_whitespace();
            let (user, id) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let holders: Vec<u64> = words
                .next()
                .unwrap_or("")
                .split(',')
                .filter_map(|n| n.parse().ok())
                .collect();
            let fetched =
                super::mail_transfer::fetch(context, &user.to_lowercase(), id, &holders).await;
            transfer_answer(fetched, |bytes| Response {
                status: 200,
                content_type: "message/rfc822",
                body: bytes,
            })
        }
        ("POST", "/users/append-many") => {
            // A JSON line (`NewMails`), then the messages' bytes one after another.
            let Some(at) = request.body.iter().position(|&b| b == b'\n') else {
                return text(400, "expected a JSON line, then the messages\n");
            };
            let mails: super::mail_transfer::NewMails =
                match serde_json::from_slice(&request.body[..at]) {
                    Ok(mails) => mails,
                    Err(e) => return text(400, format!("bad request line: {e}\n")),
                };
            let stored =
                super::mail_transfer::store_many(context, mails, &request.body[at + 1..]).await;
            transfer_answer(stored, |uids| {
                json(201, &serde_json::json!({ "uids": uids }))
            })
        }
        ("POST", "/users/show") => {
            let email = String::from_utf8_lossy(&request.body).trim().to_lowercase();
            match super::user_usage::usage(context, &email).await {
                Ok(usage) => json(200, &usage),
                Err(error @ super::user_usage::UsageError::NoSuchUser(_)) => {
                    text(404, format!("{error}\n"))
                }
                Err(error) => text(503, format!("{error}\n")),
            }
        }
        ("POST", "/users/delete") => {
            let email = String::from_utf8_lossy(&request.body).trim().to_lowercase();
            match super::user_removal::remove(context, &email).await {
                Ok(removal) => json(200, &removal),
                Err(error @ super::user_removal::RemovalError::NoSuchUser(_)) => {
                    text(404, format!("{error}\n"))
                }
                Err(error) => text(503, format!("{error}\n")),
            }
        }
        ("POST", "/users/quota") => {
            // `EMAIL`, then optionally a line of `storage=… messages=…` to change.
            let body = String::from_utf8_lossy(&request.body).into_owned();
            let (email, settings) = body.split_once('\n').unwrap_or((body.as_str(), ""));
            match super::quota::show_or_set(context, email.trim(), settings).await {
                Ok(report) => json(200, &report),
                Err(error @ super::quota::QuotaError::NoSuchUser(_)) => {
                    text(404, format!("{error}\n"))
                }
                Err(error @ super::quota::QuotaError::Invalid(_)) => {
                    text(400, format!("{error}\n"))
                }
                Err(error) => text(503, format!("{error}\n")),
            }
        }
        ("POST", "/users/import") => import(context, &request.body).await,
        ("POST", "/users/bulk") => bulk(context, &request.body).await,
        _ => text(404, "not found: try /status, /metrics, /users\n"),
    }
}

/// The answer to an import or export call: the value, or the error's status and text.
fn transfer_answer<T>(
    result: Result<T, super::mail_transfer::TransferError>,
    ok: impl FnOnce(T) -> Response,
) -> Response {
    use super::mail_transfer::TransferError;
    match result {
        Ok(value) => ok(value),
        Err(error @ TransferError::NoSuchUser(_)) => text(404, format!("{error}\n")),
        Err(error @ TransferError::Refused(_)) => text(422, format!("{error}\n")),
        Err(error @ TransferError::Unavailable) => text(503, format!("{error}\n")),
    }
}

/// Changes an existing user's password, here and on every other member (the newest update of
/// a profile wins everywhere; a member that is down gets it when it rejoins).
async fn set_password(
    context: &CoreContext,
    email: &str,
    password: &str,
) -> Result<(), (u16, String)> {
    let email = email.to_lowercase();
    if password.is_empty() {
        return Err((400, "empty password\n".into()));
    }
    match context.user_exists(&email).await {
        Ok(true) => {}
        Ok(false) => return Err((404, format!("no user {email}\n"))),
        Err(_) => return Err((500, "storage unavailable\n".into())),
    }
    let secrets = users::secrets_off_core(password)
        .await
        .map_err(|e| (500, e))?;
    // The new profile keeps what the old one said besides the secrets.
    let not_before = context
        .call(ReadProfile {
            user: email.clone(),
        })
        .await
        .map_err(|_| (500, "storage unavailable\n".to_string()))?
        .and_then(|profile| users::not_before_of(&profile));
    store_profile(
        context,
        email,
        users::encode_profile_after(&secrets, not_before),
    )
    .await
}

/// Stores a profile made here and sends it, with its timestamp, to every other member (one
/// that misses it gets it when it next joins).
pub(super) async fn store_profile(
    context: &CoreContext,
    email: String,
    profile: Vec<u8>,
) -> Result<(), (u16, String)> {
    store_profile_everywhere(context, email, profile)
        .await
        .map(|_| ())
}

/// [`store_profile`], answering with the members that did not take it.
pub(super) async fn store_profile_everywhere(
    context: &CoreContext,
    email: String,
    profile: Vec<u8>,
) -> Result<Vec<u64>, (u16, String)> {
    let put = PutProfile {
        user: email.clone(),
        profile: Arc::new(profile.clone()),
        stamp: None,
    };
    let hlc = context
        .call(put)
        .await
        .map_err(|e| (500, format!("storage error: {e:?}\n")))?
        .ok_or_else(|| {
            (
                500,
                "storage error: the profile was not written\n".to_string(),
            )
        })?;
    Ok(super::cluster_driver::replicate_profiles(context, vec![(email, hlc, profile)]).await)
}

/// Creates a user; `shared` is a profile made once for many users (bulk creation).
async fn add_user(
    context: &CoreContext,
    email: &str,
    password: &str,
    shared: Option<&[u8]>,
) -> Result<(), (u16, String)> {
    let email = email.to_lowercase();
    if !users::valid_user(&email) {
        return Err((400, format!("invalid address {email:?}\n")));
    }
    if password.is_empty() {
        return Err((400, "empty password\n".into()));
    }
    match context.user_exists(&email).await {
        Ok(true) => return Err((409, format!("{email} exists\n"))),
        Ok(false) => {}
        Err(_) => return Err((500, "storage unavailable\n".into())),
    }
    // An address deleted before: its earlier user's mail, wherever some is left, is not
    // this user's (see `removed_users`).
    let not_before = context
        .call(RemovedAt {
            user: email.clone(),
        })
        .await
        .map_err(|_| (500, "storage unavailable\n".to_string()))?;
    let profile = match shared {
        Some(profile) => users::with_not_before(profile, not_before),
        None => users::encode_profile_after(
            &users::secrets_off_core(password)
                .await
                .map_err(|e| (500, e))?,
            not_before,
        ),
    };
    store_profile(context, email, profile).await
}

async fn import(context: &CoreContext, body: &[u8]) -> Response {
    let text_body = String::from_utf8_lossy(body);
    let (mut created, mut failed) = (0u64, Vec::new());
    for (n, line) in text_body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(email), Some(password)) = (fields.next(), fields.next()) else {
            failed.push(format!("line {}: expected `EMAIL PASSWORD`", n + 1));
            continue;
        };
        match add_user(context, email, password, None).await {
            Ok(()) => created += 1,
            Err((_, message)) => failed.push(format!("line {}: {}", n + 1, message.trim())),
        }
    }
    json(
        200,
        &serde_json::json!({ "created": created, "failed": failed }),
    )
}

async fn bulk(context: &Rc<CoreContext>, body: &[u8]) -> Response {
    #[derive(serde::Deserialize)]
    struct Bulk {
        count: u64,
        prefix: String,
        domain: String,
        password: String,
    }
    let spec: Bulk = match serde_json::from_slice(body) {
        Ok(spec) => spec,
        Err(e) => {
            return text(
                400,
                format!("expected JSON {{count, prefix, domain, password}}: {e}\n"),
            )
        }
    };
    if spec.password.is_empty() || !users::valid_user(&format!("{}1@{}", spec.prefix, spec.domain))
    {
        return text(400, "invalid prefix, domain or password\n");
    }
    if spec.count == 0 || spec.count > BULK_COUNT_MAX {
        return text(
            400,
            format!(
                "count must be between 1 and {BULK_COUNT_MAX} (got {})\n",
                spec.count
            ),
        );
    }
    let started = Instant::now();
    let phc = match users::secrets_off_core(&spec.password).await {
        Ok(secrets) => Arc::new(users::encode_profile(&secrets)),
        Err(e) => return text(500, e),
    };
    let mut in_flight = std::collections::VecDeque::new();
    let (mut created, mut failed) = (0u64, 0u64);
    // What was stored, with each update's timestamp, for the other members.
    let mut stored: Vec<(String, u64, Vec<u8>)> = Vec::new();
    let clustered = context.cluster.clustered();
    let mut tally = |(email, outcome): (String, Result<Option<u64>, StoreError>)| match outcome {
        Ok(Some(hlc)) => {
            created += 1;
            if clustered {
                stored.push((email, hlc, phc.to_vec()));
            }
        }
        Ok(None) | Err(_) => failed += 1,
    };
    for n in 1..=spec.count {
        let email = format!("{}{n}@{}", spec.prefix, spec.domain).to_lowercase();
        let context = context.clone();
        let put = PutProfile {
            user: email.clone(),
            profile: phc.clone(),
            stamp: None,
        };
        in_flight.push_back(glommio::spawn_local(async move {
            let stored = context.call(put).await;
            (email, stored)
        }));
        if in_flight.len() >= BULK_PARALLELISM {
            if let Some(task) = in_flight.pop_front() {
                tally(task.await);
            }
        }
    }
    for task in in_flight {
        tally(task.await);
    }
    if context.cluster.clustered() {
        let _ = super::cluster_driver::replicate_profiles(context, stored).await;
    }
    json(
        200,
        &serde_json::json!({ "created": created, "failed": failed, "seconds": started.elapsed().as_secs_f64() }),
    )
}

async fn status(context: &CoreContext) -> Status {
    let shards: Vec<ShardReport> = context.call_each(ShardReports).await;
    let config = &context.config;
    let view = context.cluster.view.load_full();
    let shared = &context.cluster;
    let members = view
        .members
        .iter()
        .map(|m| {
            let is_self = m.id == shared.me.id;
            let (load, full, load_age_ms) = if is_self {
                (
                    Some(shared.load.total()),
                    shared.load.is_full(now_ms()),
                    Some(0),
                )
            } else {
                match shared.loads.get(m.id, now_ms()) {
                    Some(h) => (Some(h.load), h.full, Some(h.age.as_millis() as u64)),
                    None => (None, false, None),
                }
            };
            MemberStatus {
                id: m.id,
                address: m.addr.clone(),
                load,
                load_age_ms,
                full,
                is_self,
            }
        })
        .collect();
    let (policy, spread) = match config.placement {
        crate::placement::PlacementPolicy::Static => (PlacementName::Static, None),
        crate::placement::PlacementPolicy::Random => (PlacementName::Random, None),
        crate::placement::PlacementPolicy::Dynamic { spread } => {
            (PlacementName::Dynamic, Some(spread))
        }
    };
    let by_node = view.map.summary();
    Status {
        node: NodeInfo {
            hostname: config.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cores: context.router.cores(),
            domains: config.domains.clone(),
            smtp: config.smtp.to_string(),
            pop3: config.pop3.to_string(),
            admin: config.admin.to_string(),
            uptime_s: context.started.elapsed().as_secs(),
        },
        node_id: shared.me.id,
        epoch: EpochInfo {
            clock: view.epoch.clock,
            coordinator: view.epoch.coordinator,
        },
        members,
        buckets: Buckets {
            total: view.map.buckets(),
            owned: by_node.get(&shared.me.id).copied().unwrap_or(0),
            by_node,
        },
        users: shards.iter().map(|s| s.users).sum(),
        messages: shards.iter().map(|s| s.messages).sum(),
        replication: ReplicationStatus {
            replicas: config.replicas,
            ack: match config.ack_policy {
                super::replicas::AckPolicy::AllReplicas => AckName::All,
                super::replicas::AckPolicy::Coordinator => AckName::Coordinator,
            },
            pending_updates: shards.iter().map(|s| s.pending_updates).sum(),
            dead_after_s: config.membership.dead_after_ms / 1000,
            dead_nodes: shared.dead.load().to_vec(),
            under_replicated: NodeMetrics::get(&context.metrics.copies_under_replicated),
            healed: NodeMetrics::get(&context.metrics.copies_healed),
            heal_failures: NodeMetrics::get(&context.metrics.heal_failures),
            anti_entropy_repairs: NodeMetrics::get(&context.metrics.anti_entropy_repairs),
        },
        placement: PlacementStatus {
            policy,
            spread,
            overload_ops: config.overload_ops,
        },
        engine: EngineStatus {
            batch_kib: config.engine.batch_bytes_max >> 10,
            commit_window_us: config.engine.commit_window.as_micros() as u64,
            io_depth: config.engine.io_depth,
        },
        disks: config
            .data_dirs
            .iter()
            .map(|dir| DiskStatus {
                dir: dir.display().to_string(),
                weight: config
                    .disk_weights
                    .iter()
                    .find(|(d, _)| d == dir)
                    .map_or(1.0, |(_, w)| *w),
                throttle: config
                    .throttles
                    .iter()
                    .find(|(d, _)| d == dir)
                    .map(|(_, t)| t.to_string()),
            })
            .collect(),
        shards,
    }
}

/// A per-shard figure: its name and help, and how to read it from a report.
type ShardFigure<T> = (super::metrics_text::Name, fn(&ShardReport) -> T);

async fn metrics(context: &CoreContext) -> String {
    use super::metrics_text::{render, Figures, Name};
    let m = &context.metrics;
    let counters: [(Name, &std::sync::atomic::AtomicU64); 24] = [
        (
            ("porcupine_smtp_sessions", "SMTP connections accepted"),
            &m.smtp_sessions,
        ),
        (
            ("porcupine_pop3_sessions", "POP3 connections accepted"),
            &m.pop3_sessions,
        ),
        (
            (
                "porcupine_imap_sessions",
                "IMAP connections accepted (IMAP and IMAPS)",
            ),
            &m.imap_sessions,
        ),
        (
            ("porcupine_lmtp_sessions", "LMTP connections accepted"),
            &m.lmtp_sessions,
        ),
        (
            ("porcupine_imap_errors", "IMAP BAD and NO replies"),
            &m.imap_errors,
        ),
        (
            (
                "porcupine_sessions_refused",
                "connections refused over the limit",
            ),
            &m.sessions_refused,
        ),
        (
            (
                "porcupine_cluster_connections_refused",
                "cluster connections closed for not holding the cluster key",
            ),
            &m.peers_refused,
        ),
        (
            (
                "porcupine_cluster_messages_refused",
                "messages from members refused as implausible (broken views, far-future stamps)",
            ),
            &m.peer_messages_refused,
        ),
        (
            (
                "porcupine_tls_handshakes",
                "client TLS handshakes completed (STARTTLS, STLS, POP3S, IMAPS)",
            ),
            &m.tls_handshakes,
        ),
        (
            (
                "porcupine_tls_failures",
                "client TLS handshakes that failed",
            ),
            &m.tls_failures,
        ),
        (
            (
                "porcupine_transfer_refused",
                "messages refused 451 4.3.1 for want of transfer memory",
            ),
            &m.transfer_refused,
        ),
        (
            ("porcupine_deliveries", "messages accepted with 250"),
            &m.messages_accepted,
        ),
        (
            ("porcupine_recipients_delivered", "mailbox copies stored"),
            &m.recipients_delivered,
        ),
        (
            ("porcupine_delivered_bytes", "bytes of messages accepted"),
            &m.bytes_accepted,
        ),
        (
            ("porcupine_pop3_retrieved", "messages retrieved by POP3"),
            &m.messages_retrieved,
        ),
        (
            ("porcupine_pop3_deleted", "messages deleted by POP3"),
            &m.messages_deleted,
        ),
        (
            (
                "porcupine_imap_descriptions_read",
                "message descriptions (ENVELOPE, BODYSTRUCTURE) read as stored with the message",
            ),
            &m.descriptions_read,
        ),
        (
            (
                "porcupine_imap_descriptions_made",
                "message descriptions made from the message's bytes at a FETCH (mail stored \
                 before descriptions were)",
            ),
            &m.descriptions_made,
        ),
        (
            ("porcupine_pop3_errors", "POP3 -ERR replies"),
            &m.pop3_errors,
        ),
        (
            (
                "porcupine_copies_healed",
                "copies of a dead node's mail made again by this node",
            ),
            &m.copies_healed,
        ),
        (
            (
                "porcupine_heal_failures",
                "copies healing could not make again (tried again at the next survey)",
            ),
            &m.heal_failures,
        ),
        (
            (
                "porcupine_anti_entropy_rounds",
                "anti-entropy rounds begun with another member",
            ),
            &m.anti_entropy_rounds,
        ),
        (
            (
                "porcupine_anti_entropy_buckets_differing",
                "digest buckets found to differ from a member's",
            ),
            &m.anti_entropy_buckets_differing,
        ),
        (
            (
                "porcupine_anti_entropy_repairs",
                "copies pushed to a member that lacked them",
            ),
            &m.anti_entropy_repairs,
        ),
    ];
    let mut figures = Figures {
        counters: counters
            .iter()
            .map(|(name, counter)| (*name, NodeMetrics::get(counter)))
            .collect(),
        ..Figures::default()
    };
    let replies = m.smtp_replies();
    figures.labeled_counters.push((
        ("porcupine_smtp_replies", "SMTP and LMTP replies by code"),
        "code",
        replies
            .iter()
            .map(|(code, n)| (code.to_string(), *n))
            .collect(),
    ));
    let sessions = [
        ("smtp", &m.smtp_sessions),
        ("lmtp", &m.lmtp_sessions),
        ("pop3", &m.pop3_sessions),
        ("imap", &m.imap_sessions),
    ];
    figures.labeled_counters.push((
        (
            "porcupine_sessions",
            "client connections accepted, by protocol",
        ),
        "protocol",
        sessions
            .iter()
            .map(|(p, c)| (p.to_string(), NodeMetrics::get(c)))
            .collect(),
    ));
    // SMTP and LMTP errors are their 4xx and 5xx replies; POP3's -ERR; IMAP's NO and BAD.
    let smtp_errors: u64 = replies
        .iter()
        .filter(|(code, _)| *code >= 400)
        .map(|(_, n)| n)
        .sum();
    figures.labeled_counters.push((
        ("porcupine_errors", "error replies to clients, by protocol"),
        "protocol",
        vec![
            ("smtp".into(), smtp_errors),
            ("pop3".into(), NodeMetrics::get(&m.pop3_errors)),
            ("imap".into(), NodeMetrics::get(&m.imap_errors)),
        ],
    ));
    figures.gauges.push((
        (
            "porcupine_copies_under_replicated",
            "copies here with fewer holders than --replicas that are not dead",
        ),
        NodeMetrics::get(&m.copies_under_replicated) as f64,
    ));
    figures.gauges.push((
        (
            "porcupine_dead_nodes",
            "nodes this node declared dead (gone longer than --dead-after)",
        ),
        context.cluster.dead.load().len() as f64,
    ));
    figures.gauges.push((
        (
            "porcupine_members",
            "members in this node's view of the cluster",
        ),
        context.cluster.view.load().members.len() as f64,
    ));
    figures.labeled_gauges.push((
        (
            "porcupine_sessions_open",
            "client sessions open, by the core serving them",
        ),
        "core",
        (0..context.config.cores)
            .map(|core| (core.to_string(), context.sessions.open(core) as f64))
            .collect(),
    ));
    let shards: Vec<ShardReport> = context.call_each(ShardReports).await;
    let by_shard = |value: fn(&ShardReport) -> f64| -> Vec<(String, f64)> {
        shards.iter().map(|s| (s.name.clone(), value(s))).collect()
    };
    let by_shard_count = |value: fn(&ShardReport) -> u64| -> Vec<(String, u64)> {
        shards.iter().map(|s| (s.name.clone(), value(s))).collect()
    };
    let shard_gauges: [ShardFigure<f64>; 5] = [
        (
            (
                "porcupine_shard_load",
                "operations under way that may touch the shard's disk",
            ),
            |s| f64::from(s.load),
        ),
        (
            (
                "porcupine_shard_replication_pending",
                "replicated updates not yet on every replica",
            ),
            |s| s.pending_updates as f64,
        ),
        (("porcupine_shard_messages", "messages stored"), |s| {
            s.messages as f64
        }),
        (
            (
                "porcupine_shard_poisoned",
                "1 when the shard stopped writing after a disk error (its mail is served by replicas)",
            ),
            |s| f64::from(u8::from(s.poisoned.is_some())),
        ),
        (
            ("porcupine_shard_records_per_fsync_mean", "mean records per fdatasync"),
            |s| s.records_per_fsync_mean,
        ),
    ];
    for (name, value) in shard_gauges {
        figures
            .labeled_gauges
            .push((name, "shard", by_shard(value)));
    }
    let shard_counters: [ShardFigure<u64>; 8] = [
        (
            (
                "porcupine_shard_appended_bytes",
                "bytes appended to the log",
            ),
            |s| s.appended_bytes,
        ),
        (
            (
                "porcupine_shard_appended_records",
                "records appended to the log",
            ),
            |s| s.appended_records,
        ),
        (
            (
                "porcupine_shard_segments_recycled",
                "new segments made from compacted ones (no zeros written)",
            ),
            |s| s.segments_recycled,
        ),
        (
            (
                "porcupine_shard_segments_created",
                "new segments created with reserved blocks (none to recycle: the store grows)",
            ),
            |s| s.segments_created,
        ),
        (
            (
                "porcupine_shard_zeroed_bytes",
                "zeros written ahead of the log in idle time (a second write of those bytes)",
            ),
            |s| s.zeroed_bytes,
        ),
        (
            (
                "porcupine_shard_compacted_bytes",
                "bytes compaction copied forward",
            ),
            |s| s.compacted_bytes,
        ),
        (
            (
                "porcupine_shard_checkpoint_bytes",
                "bytes of index checkpoints written",
            ),
            |s| s.checkpoint_bytes,
        ),
        (("porcupine_shard_fsyncs", "group-commit fdatasyncs"), |s| {
            s.fsyncs
        }),
    ];
    for (name, value) in shard_counters {
        figures
            .labeled_counters
            .push((name, "shard", by_shard_count(value)));
    }
    figures.histograms.push((
        (
            "porcupine_shard_fsync_seconds",
            "group-commit fdatasync latency",
        ),
        "shard",
        shards
            .iter()
            .map(|s| (s.name.clone(), s.fsync_histogram.clone()))
            .collect(),
    ));
    figures.histograms.push((
        (
            "porcupine_shard_ack_seconds",
            "append-to-durable latency of each update",
        ),
        "shard",
        shards
            .iter()
            .map(|s| (s.name.clone(), s.ack_histogram.clone()))
            .collect(),
    ));
    render(figures)
}
