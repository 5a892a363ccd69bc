//! Real IMAP clients against the real binary, driven non-interactively (tests/py/imap_clients.py):
//! mbsync (isync) and offlineimap3 syncing a folder tree both ways and again with nothing to
//! do, fetchmail fetching INBOX over IMAP byte-exact, neomutt in a tmux pane opening INBOX and
//! reading a message, and the `imapclient` library. Each client gets its own user. `.ci/run`
//! installs the clients; a missing one fails the test with its name (never a silent skip).

mod common;

use common::{python, Node, PASSWORD};

const CLIENTS: [(&str, &str); 5] = [
    ("mbsync", "mbsync"),
    ("offlineimap", "offlineimap"),
    ("fetchmail", "fetchmail"),
    ("neomutt", "neomutt"),
    ("imapclient", "python3"),
];

#[test]
fn stock_imap_clients_sync_fetch_and_read() {
    for (_, program) in CLIENTS {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{program} is needed for this test (.ci/run installs it)"
        );
    }
    assert!(
        std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok(),
        "tmux is needed for the neomutt check (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    for (client, _) in CLIENTS {
        let user = format!("{client}@localhost");
        node.add_user(&user);
        let work = dir.path().join(client);
        let out = python(
            "imap_clients.py",
            &[
                client.into(),
                node.ip.clone(),
                node.imap.to_string(),
                node.smtp.to_string(),
                user,
                PASSWORD.into(),
                work.display().to_string(),
            ],
        );
        assert!(out.contains(&format!("{client} ok")), "{out}");
        println!("{client}: ok");
    }
}
