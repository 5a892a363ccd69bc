//! `/metrics` through the real binary as a Prometheus user reads it, and the Grafana dashboard
//! in `tools/grafana/` drawn from it (tests/py/metrics.py): while mail is delivered, read and
//! refused, the document is scraped and parsed by the Prometheus project's own OpenMetrics
//! parser, its figures have the types Prometheus expects (counters, gauges, histograms), and
//! every panel's queries are evaluated over the scrapes and plotted to PNG. The Python
//! `prometheus_client` and `matplotlib` packages must be installed (`.ci/run` installs them):
//! missing, the test fails with that reason, never a silent skip.

mod common;

use common::{python, Node, PASSWORD};

#[test]
fn metrics_parse_as_openmetrics_and_the_dashboard_plots() {
    let found = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client, matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the Python packages prometheus_client and matplotlib are needed (.ci/run installs them)"
    );
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]);
    let user = "metrics@localhost";
    node.add_user(user);
    let png = dir.path().join("dashboard.png");
    let out = python(
        "metrics.py",
        &[
            node.ip.clone(),
            node.admin.to_string(),
            node.smtp.to_string(),
            node.pop3.to_string(),
            node.imap.to_string(),
            user.into(),
            PASSWORD.into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/porcupine-node.json").into(),
            png.display().to_string(),
        ],
    );
    assert!(out.contains("metrics ok 12 panels"), "{out}");
    println!("{out}");
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 20_000, "the dashboard's PNG is {size} bytes");
    // Kept for a human to look at when asked.
    if let Ok(keep) = std::env::var("PORCUPINE_DASHBOARD_PNG") {
        std::fs::copy(&png, keep).unwrap();
    }
}
