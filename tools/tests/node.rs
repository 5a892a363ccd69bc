//! The real `porcupine` binary with stock clients (Python's smtplib and poplib).

mod common;

use common::{python, Node, PASSWORD};

#[test]
fn byte_exact_round_trips_uidl_top_and_deletion_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let users = ["alice@localhost", "bob@localhost", "carol@localhost"];
    for u in users {
        node.add_user(u);
    }
    let mut args = vec![
        node.smtp.to_string(),
        node.pop3.to_string(),
        PASSWORD.to_string(),
    ];
    args.extend(users.iter().map(|u| u.to_string()));
    let out = python("roundtrip.py", &args);
    assert!(out.contains("roundtrip ok"), "{out}");
    let status = node.terminate();
    assert!(status.success(), "SIGTERM exit status {status:?}");
}

#[test]
fn bad_input_gets_standard_replies_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    node.add_user("victim@localhost");
    node.bulk_users(1000, "r");
    let out = python(
        "bad_input.py",
        &[
            node.smtp.to_string(),
            node.pop3.to_string(),
            "victim@localhost".into(),
            PASSWORD.into(),
        ],
    );
    eprintln!("{out}");
    assert!(out.contains("bad input ok"), "{out}");
    // The script drew at least five POP3 error replies (a wrong password, three commands before
    // login, an over-long line); the node counted them.
    let errors = node
        .metric("porcupine_pop3_errors_total")
        .expect("porcupine_pop3_errors_total is exported");
    assert!(errors >= 5.0, "porcupine_pop3_errors_total {errors}");
    assert!(node.terminate().success());
}

#[test]
fn a_changed_password_takes_effect_at_once_though_logins_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    node.add_user("changer@localhost");
    let login = |password: &str| {
        python(
            "cluster_mail.py",
            &[
                "login".into(),
                node.ip.clone(),
                node.pop3.to_string(),
                "changer@localhost".into(),
                password.into(),
            ],
        )
    };
    // The second login is served from the verified-credentials cache.
    assert!(login(PASSWORD).contains("login ok"));
    assert!(login(PASSWORD).contains("login ok"));
    assert!(login("not it").contains("login refused"));
    node.set_password("changer@localhost", "new secret");
    assert!(login(PASSWORD).contains("login refused"));
    assert!(login("new secret").contains("login ok"));
    assert!(login("new secret").contains("login ok"));
    assert!(login(PASSWORD).contains("login refused"));
    assert!(node.terminate().success());
}
