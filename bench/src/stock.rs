//! Postfix's own load generator, `smtp-source`, against an SMTP server: the shapes a stock MTA
//! produces (connection reuse, 1 to 100 sessions, 1 or 4 recipients per message), so that no
//! headline rests on `porcupine-load` alone.
//!
//! One run is one `smtp-source -d -s SESSIONS -m MESSAGES -r RECIPIENTS -l BYTES` process; its
//! rate is messages (transactions) over the process's wall time, start to exit, connection set-up
//! included. `smtp-source` stops at the first reply it did not expect (no `-A`): a run that
//! exits non-zero is an error, never a figure. With `-r N` the recipients are `LOCAL@DOMAIN`,
//! `2LOCAL@DOMAIN`, …, `NLOCAL@DOMAIN` ([`recipients`]).

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// One shape of load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub sessions: usize,
    pub recipients: usize,
    pub messages: usize,
    pub bytes: usize,
}

impl Shape {
    /// The shape with `sessions` and `recipients`, and enough messages that a run lasts a few
    /// seconds on this kind of machine (about 2,000 per session at one session, 200 per session
    /// beyond ten).
    pub fn sized(sessions: usize, recipients: usize, bytes: usize) -> Self {
        Self {
            sessions,
            recipients,
            messages: (200 * sessions).max(2_000),
            bytes,
        }
    }
}

/// The recipients `smtp-source -r count -t local@domain` sends each message to.
pub fn recipients(local: &str, domain: &str, count: usize) -> Vec<String> {
    (1..=count.max(1))
        .map(|n| {
            if n == 1 {
                format!("{local}@{domain}")
            } else {
                format!("{n}{local}@{domain}")
            }
        })
        .collect()
}

/// Runs `smtp-source` once against `127.0.0.1:port`; returns messages per second.
pub fn run(port: u16, shape: Shape, local: &str, domain: &str) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new("smtp-source")
        .arg("-d")
        .args(["-s", &shape.sessions.to_string()])
        .args(["-m", &shape.messages.to_string()])
        .args(["-r", &shape.recipients.max(1).to_string()])
        .args(["-l", &shape.bytes.to_string()])
        .args(["-f", &format!("load@{domain}")])
        .args(["-t", &format!("{local}@{domain}")])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running smtp-source (Debian: postfix)")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "smtp-source -s {} -r {} against port {port} failed ({}): {}",
            shape.sessions,
            shape.recipients,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(shape.messages as f64 / seconds.max(1e-9))
}

/// One measured run of one system.
#[derive(Clone, Copy, Debug)]
pub struct StockRun {
    pub system: &'static str,
    pub round: usize,
    pub shape: Shape,
    pub msgs_per_s: f64,
}

/// A server to load: its SMTP port, and a check of what it counted that must follow each run
/// (porcupine's count of copies stored; `None` for a server that stores nothing).
pub struct StockTarget<'a> {
    pub system: &'static str,
    pub port: u16,
    pub stored: Option<&'a dyn Fn() -> Result<u64>>,
}

impl std::fmt::Debug for StockTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockTarget")
            .field("system", &self.system)
            .field("port", &self.port)
            .field("counts_stored", &self.stored.is_some())
            .finish()
    }
}

/// One round: every shape against every target, the targets' order alternating from shape
/// to shape and round to round so that none always runs first.
pub fn measure_round(
    targets: &[StockTarget<'_>],
    shapes: &[Shape],
    round: usize,
    local: &str,
    domain: &str,
) -> Result<Vec<StockRun>> {
    let mut runs = Vec::new();
    for (k, &shape) in shapes.iter().enumerate() {
        for i in 0..targets.len() {
            let target = &targets[(i + k + round) % targets.len()];
            let before = target.stored.map(|count| count()).transpose()?;
            let msgs_per_s = run(target.port, shape, local, domain)
                .with_context(|| format!("smtp-source against {}", target.system))?;
            if let (Some(count), Some(before)) = (target.stored, before) {
                let stored = count()?.saturating_sub(before);
                let expected = (shape.messages * shape.recipients.max(1)) as u64;
                if stored != expected {
                    bail!(
                        "{}: smtp-source was answered 250 for {expected} copies, the node \
                         counted {stored} stored",
                        target.system
                    );
                }
            }
            eprintln!(
                "round {} {:>18} smtp-source -s {:<3} -r {} {:>9.0} msg/s",
                round + 1,
                target.system,
                shape.sessions,
                shape.recipients,
                msgs_per_s
            );
            runs.push(StockRun {
                system: target.system,
                round,
                shape,
                msgs_per_s,
            });
        }
    }
    Ok(runs)
}

/// The median rate of `system` at `shape` over the rounds (0 if it never ran).
pub fn median(runs: &[StockRun], system: &str, shape: Shape) -> f64 {
    let mut rates: Vec<f64> = runs
        .iter()
        .filter(|r| r.system == system && r.shape == shape)
        .map(|r| r.msgs_per_s)
        .collect();
    if rates.is_empty() {
        return 0.0;
    }
    rates.sort_by(f64::total_cmp);
    let mid = rates.len() / 2;
    if rates.len() % 2 == 0 {
        (rates[mid - 1] + rates[mid]) / 2.0
    } else {
        rates[mid]
    }
}

/// The Markdown section: per shape, `system`'s and `baseline`'s medians and their ratio.
pub fn table(runs: &[StockRun], shapes: &[Shape], system: &str, baseline: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Postfix's smtp-source\n\n`smtp-source -d -s SESSIONS -m MESSAGES -r RECIPIENTS -l \
         BYTES` (connection reuse; no pipelining), against {system} (every 250 after \
         `fdatasync`) and {baseline} (no disk), alternating; medians over the rounds, messages \
         (transactions) per second of the process's wall time:\n"
    );
    let _ = writeln!(
        out,
        "| sessions | recipients | messages | {system} msg/s | {baseline} msg/s | ratio |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    for &shape in shapes {
        let (ours, theirs) = (median(runs, system, shape), median(runs, baseline, shape));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} |",
            shape.sessions,
            shape.recipients,
            shape.messages,
            ours,
            theirs,
            ours / theirs.max(1e-9)
        );
    }
    out
}

/// The JSON summary: one object per shape with both medians and the ratio.
pub fn summary(
    runs: &[StockRun],
    shapes: &[Shape],
    system: &str,
    baseline: &str,
) -> serde_json::Value {
    serde_json::Value::Array(
        shapes
            .iter()
            .map(|&shape| {
                let (ours, theirs) = (median(runs, system, shape), median(runs, baseline, shape));
                serde_json::json!({
                    "sessions": shape.sessions,
                    "recipients": shape.recipients,
                    "messages": shape.messages,
                    "porcupine": ours,
                    "smtp_sink": theirs,
                    "ratio": ours / theirs.max(1e-9),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_numbered_as_smtp_source_numbers_them() {
        assert_eq!(recipients("u", "d.test", 1), vec!["u@d.test"]);
        assert_eq!(
            recipients("u", "d.test", 4),
            vec!["u@d.test", "2u@d.test", "3u@d.test", "4u@d.test"]
        );
    }

    #[test]
    fn medians_are_per_system_and_shape() {
        let shape = Shape::sized(1, 1, 10);
        let other = Shape::sized(20, 1, 10);
        let run = |system, msgs_per_s, shape| StockRun {
            system,
            round: 0,
            shape,
            msgs_per_s,
        };
        let runs = [
            run("a", 3.0, shape),
            run("a", 1.0, shape),
            run("a", 100.0, other),
            run("b", 4.0, shape),
        ];
        assert_eq!(median(&runs, "a", shape), 2.0);
        assert_eq!(median(&runs, "b", shape), 4.0);
        assert_eq!(median(&runs, "b", other), 0.0);
        let summary = summary(&runs, &[shape], "a", "b");
        assert_eq!(summary[0]["ratio"], 0.5);
    }

    #[test]
    fn a_run_lasts_long_enough_at_every_session_count() {
        assert_eq!(Shape::sized(1, 1, 4700).messages, 2_000);
        assert_eq!(Shape::sized(20, 4, 4700).messages, 4_000);
        assert_eq!(Shape::sized(100, 1, 4700).messages, 20_000);
    }
}
