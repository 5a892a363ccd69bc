//! Trust boundaries of the real binary: the cluster port admits only holders of the cluster
//! key and checks even them; the admin endpoint wants its token and this node's Host; a lone
//! node listens for no other node; a panic stops the node instead of leaving it half-alive.
//! Nodes here live on 127.0.0.71–74.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::{member_count, start_lone_member, start_member, Ports};
use common::{binary, python, Node, PASSWORD};
use porcupine_cluster::membership::{Epoch, Member, Msg, View};
use porcupine_cluster::rpc::{
    self, FetchMessage, ListFragment, OneWay, Request, StoreMessage, SyncProfiles,
};
use porcupine_cluster::usermap::UserMap;
use porcupine_cluster::wire::{self, FrameKind};

fn login(node: &Node, user: &str, password: &str) -> bool {
    python(
        "cluster_mail.py",
        &[
            "login".into(),
            node.ip.clone(),
            node.pop3.to_string(),
            user.into(),
            password.into(),
        ],
    )
    .contains("login ok")
}

fn count(node: &Node, user: &str) -> String {
    python(
        "cluster_mail.py",
        &[
            "count".into(),
            node.ip.clone(),
            node.pop3.to_string(),
            PASSWORD.into(),
            user.into(),
        ],
    )
}

fn frame(request: impl Into<Request>) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(&mut out, FrameKind::Request, 1, 0, 42, &request.into()).unwrap();
    out
}

fn one_way(body: &OneWay) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(&mut out, FrameKind::OneWay, 0, 0, 42, body).unwrap();
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A view in which `intruder` manages every bucket, with a huge epoch.
fn hostile_view(node_id: u64, intruder: Member, buckets: usize) -> View {
    let epoch = Epoch {
        clock: u64::MAX / 2,
        coordinator: intruder.id,
    };
    let me = Member {
        id: node_id,
        addr: "127.0.0.71:1".into(),
    };
    let mut members = vec![me, intruder.clone()];
    members.sort();
    View {
        epoch,
        members,
        map: UserMap::single(intruder.id, buckets, epoch),
    }
}

#[test]
fn a_stranger_without_the_key_changes_nothing_and_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let node = start_lone_member(dir.path(), "127.0.0", 70, 1, &ports, &[]);
    node.add_user("alice@localhost");
    node.bulk_users(1, "user");
    python(
        "cluster_mail.py",
        &[
            "repeat".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            "mine".into(),
            "1".into(),
        ],
    );
    let intruder = Member {
        id: 7,
        addr: "127.0.0.99:7946".into(),
    };
    let status = common::cluster::status(&node);
    let node_id = status.node_id;
    let stamp = (now_ms() + 60_000) << 16;
    let frames = [
        one_way(&OneWay::Membership(Msg::Commit {
            view: hostile_view(node_id, intruder, 1024),
        })),
        frame(SyncProfiles {
            profiles: vec![(
                "alice@localhost".into(),
                u64::MAX,
                b"porcupine-profile 1\n".to_vec(),
            )],
        }),
        frame(ListFragment {
            user: "user1@localhost".into(),
        }),
        frame(FetchMessage {
            user: "user1@localhost".into(),
            id: 1,
        }),
        frame(StoreMessage {
            user: "user1@localhost".into(),
            id: u128::from(stamp),
            epoch: Epoch::default(),
            replicas: vec![node_id],
            also: Vec::new(),
            message: b"Subject: injected\r\n\r\nno Received header\r\n".to_vec(),
        }),
    ];
    for bytes in &frames {
        let mut raw = TcpStream::connect((node.ip.as_str(), ports.cluster)).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = raw.write_all(bytes);
        // The node answers nothing: it closes the connection when the handshake fails.
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "the node answered a stranger: {answer:?}"
        );
    }
    assert_eq!(member_count(&node), 1);
    assert!(
        login(&node, "alice@localhost", PASSWORD),
        "alice's password changed"
    );
    assert!(count(&node, "user1@localhost").contains("count 1"));
    let refused = node
        .metric("porcupine_cluster_connections_refused_total")
        .unwrap();
    assert!(refused >= frames.len() as f64, "refused {refused}");
}

#[test]
fn a_node_with_another_key_cannot_join_and_learns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let first = start_member(dir.path(), "127.0.0", 70, 3, &ports, &[]);
    first.bulk_users(5, "user");
    let other = tempfile::tempdir().unwrap();
    let key = common::cluster_key(other.path());
    let seeds = format!("127.0.0.73:{}", ports.cluster);
    let cluster = format!("127.0.0.74:{}", ports.cluster);
    let stranger = Node::start_in(
        None,
        &other.path().join("node"),
        "127.0.0.74",
        ports.smtp,
        ports.pop3,
        ports.admin,
        &[
            "--cluster",
            &cluster,
            "--join",
            &seeds,
            "--cluster-key",
            key.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(member_count(&first), 1);
    assert_eq!(member_count(&stranger), 1);
    assert!(!login(&stranger, "user1@localhost", PASSWORD));
    assert!(
        first
            .metric("porcupine_cluster_connections_refused_total")
            .unwrap()
            > 0.0
    );
}

#[test]
fn a_member_that_sends_a_broken_view_or_a_stamp_from_the_future_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let node = start_lone_member(dir.path(), "127.0.0", 70, 2, &ports, &[]);
    node.add_user("alice@localhost");
    let node_id = common::cluster::status(&node).node_id;
    let key_text = std::fs::read_to_string(dir.path().join("cluster.key")).unwrap();
    let key = porcupine_cluster::secure::ClusterKey::parse(&key_text).unwrap();
    let target: std::net::SocketAddr = format!("127.0.0.72:{}", ports.cluster).parse().unwrap();
    // A member (it holds the key) with a buggy view: no managers at all.
    let empty = View {
        epoch: Epoch {
            clock: now_ms(),
            coordinator: 7,
        },
        members: vec![
            Member {
                id: 7,
                addr: "127.0.0.99:7946".into(),
            },
            Member {
                id: node_id,
                addr: format!("127.0.0.72:{}", ports.cluster),
            },
        ],
        map: UserMap {
            managers: Vec::new(),
            moved: Vec::new(),
        },
    };
    let mut sorted = empty.clone();
    sorted.members.sort();
    let answers = porcupine_runtime::run_local(move || async move {
        let mut stream = glommio::net::TcpStream::connect(target).await.unwrap();
        let (opener, sealer) = porcupine_cluster::secure::connect(&mut stream, &key)
            .await
            .unwrap();
        let (reader, writer) = futures_lite::io::split(stream);
        let mut reader = porcupine_cluster::transport::FrameReader::new(reader, Some(opener));
        let (frames, queue) = flume::unbounded();
        let mut commit = Vec::new();
        wire::encode(
            &mut commit,
            FrameKind::OneWay,
            0,
            0,
            7,
            &OneWay::Membership(Msg::Commit { view: sorted }),
        )
        .unwrap();
        frames.send(commit).unwrap();
        let future = (now_ms() + 3_600_000) << 16;
        frames
            .send(frame(SyncProfiles {
                profiles: vec![(
                    "alice@localhost".into(),
                    future,
                    b"porcupine-profile 1\npassword x\n".to_vec(),
                )],
            }))
            .unwrap();
        drop(frames);
        let writer = porcupine_cluster::transport::FrameWriter::new(writer, Some(sealer));
        let writing = async {
            porcupine_cluster::transport::write_frames(writer, &queue).await;
            glommio::timer::sleep(Duration::from_secs(30)).await;
            None
        };
        let reading = async {
            let frame = porcupine_cluster::transport::read_frame(&mut reader).await;
            Some(frame.map(|(_, payload)| rpc::read_reply::<SyncProfiles>(&payload)))
        };
        let answer = futures_lite::future::or(reading, writing).await;
        format!("{answer:?}")
    })
    .unwrap();
    assert!(answers.contains("Refused(Failed)"), "{answers}");
    // Still one member, still serving, alice's password as it was.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(member_count(&node), 1);
    assert!(login(&node, "alice@localhost", PASSWORD));
    assert!(
        node.metric("porcupine_cluster_messages_refused_total")
            .unwrap()
            >= 2.0
    );
    let log = std::fs::read_to_string(dir.path().join("node2.log")).unwrap();
    assert!(log.contains("refused a membership message"), "{log}");
}

#[test]
fn admin_calls_without_the_token_or_from_another_host_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    let token = node.admin_token();
    let bearer = format!("Bearer {token}");
    for (method, path, body) in [
        ("GET", "/users", ""),
        ("GET", "/status", ""),
        ("POST", "/users", "mallory@localhost\nsecret"),
        ("POST", "/users/password", "postmaster@localhost\nsecret"),
        (
            "POST",
            "/users/bulk",
            r#"{"count":5,"prefix":"m","domain":"localhost","password":"x"}"#,
        ),
    ] {
        let (status, _) = node.admin_request(method, path, None, body.as_bytes());
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = node.admin_request(method, path, Some("Bearer nope"), body.as_bytes());
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let (status, users) = node.admin_request("GET", "/users", Some(&bearer), b"");
    assert_eq!((status, users.as_str()), (200, ""));
    let (status, metrics) = node.admin_request("GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    assert!(metrics.contains("porcupine_deliveries_total"));
    // DNS rebinding: a page whose name points at loopback sends its own Host.
    let mut raw = TcpStream::connect(node.admin_addr()).unwrap();
    write!(
        raw,
        "GET /metrics HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
        node.admin
    )
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    // A bulk request beyond the bound is refused.
    let (status, _) = node.admin_request(
        "POST",
        "/users/bulk",
        Some(&bearer),
        br#"{"count":100000000,"prefix":"m","domain":"localhost","password":"x"}"#,
    );
    assert_eq!(status, 400);
    // The CLI finds the token in the data directory, or is told where it is.
    node.add_user("bob@localhost");
    let out = std::process::Command::new(binary())
        .args(["user", "list", "--admin", &node.admin_addr()])
        .arg("--data")
        .arg(dir.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin token"));
    let out = std::process::Command::new(binary())
        .args(["user", "list", "--admin", &node.admin_addr()])
        .env("PORCUPINE_ADMIN_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bob@localhost");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("data/admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Listening TCP sockets held by process `pid`.
fn listening_sockets(pid: u32) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.get(3) == Some(&"0A")).then(|| fields.get(9).map(|s| s.to_string()))
                })
                .flatten()
                .collect::<Vec<_>>()
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

#[test]
fn a_lone_node_listens_for_no_other_node_and_a_cluster_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    assert_eq!(
        listening_sockets(node.child.id()),
        7,
        "SMTP, POP3, POP3S, IMAP, IMAPS, LMTP and admin only"
    );
    common::assert_refused(
        &["--cluster", "127.0.0.1:0"],
        "needs the cluster key: create one with `porcupine cluster-key FILE`",
    );
    common::assert_refused(&["--join", "127.0.0.1:7"], "--join needs --cluster");
    let key = common::cluster_key(dir.path());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    common::assert_refused(
        &[
            "--cluster",
            "127.0.0.1:0",
            "--cluster-key",
            key.to_str().unwrap(),
        ],
        "chmod 600",
    );
    common::assert_refused(
        &["--cluster", "10.1.2.3:7946", "--insecure-plaintext-cluster"],
        "only for measurements on loopback",
    );
}

#[test]
fn a_panic_on_a_core_stops_the_node_loudly_instead_of_leaving_it_half_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, pop3, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut child = std::process::Command::new(binary())
        .args([
            "serve",
            "--no-first-user",
            "--no-pin",
            "--no-pop3s",
            "--no-imaps",
            "--no-lmtp",
            "--imap",
            "127.0.0.1:0",
            "--cores",
            "2",
        ])
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--smtp", &format!("127.0.0.1:{smtp}")])
        .args(["--pop3", &format!("127.0.0.1:{pop3}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env("PORCUPINE_FAULT", "panic-core:1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node ran on after a core panicked"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("injected fault"), "{stderr}");
    assert!(stderr.contains("the node stops"), "{stderr}");
}
