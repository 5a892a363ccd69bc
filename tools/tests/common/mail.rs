//! Mail through a test cluster with stock clients (`py/cluster_mail.py`: smtplib, poplib):
//! users `user1..userN@localhost`, one message "TAG n" per user and tag.

use super::{python, Node, PASSWORD};

fn run(node: &Node, command: &str, tail: &[String]) -> String {
    let port = if command == "deliver" {
        node.smtp
    } else {
        node.pop3
    };
    let mut args = vec![command.to_owned(), node.ip.clone(), port.to_string()];
    if command != "deliver" {
        args.push(PASSWORD.into());
    }
    args.extend(tail.iter().cloned());
    python("cluster_mail.py", &args)
}

/// One message "TAG n" to each of the `users`, through `node`'s SMTP.
pub fn deliver(node: &Node, users: u64, tag: &str) {
    let out = run(node, "deliver", &[tag.into(), users.to_string()]);
    assert!(out.contains(&format!("delivered {users}")), "{out}");
}

/// Through `node`'s POP3: every user holds exactly one "TAG n" per tag, byte-exact.
pub fn check(node: &Node, users: u64, tags: &[&str]) {
    let mut tail = vec![users.to_string()];
    tail.extend(tags.iter().map(|t| t.to_string()));
    let out = run(node, "check", &tail);
    assert!(
        out.contains(&format!("check ok {}", users as usize * tags.len())),
        "{out}"
    );
}

/// Deletes every user's "TAG n" through `node` (exactly one each).
pub fn take(node: &Node, users: u64, tag: &str) {
    let out = run(node, "take", &[users.to_string(), tag.into()]);
    assert!(out.contains(&format!("took {users}")), "{out}");
}

/// Through `node`: no user holds a "TAG n" (a delete did not come back).
pub fn gone(node: &Node, users: u64, tag: &str) {
    let out = run(node, "gone", &[users.to_string(), tag.into()]);
    assert!(out.contains("gone ok"), "{out}");
}
