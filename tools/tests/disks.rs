//! Several data directories on one node: new users go to each in proportion to its weight
//! (`--disk-weight`), a user is found on whichever directory holds them (also after the weights
//! change), and bad weights are refused clearly.

mod common;

use common::cluster::status;
use common::{assert_refused, python, Node};

/// Users whose profiles each data directory holds, from the node's status.
fn users_per_dir(node: &Node, dirs: &[std::path::PathBuf]) -> Vec<u64> {
    let view = status(node);
    dirs.iter()
        .map(|dir| {
            view.shards
                .iter()
                .filter(|s| s.dir.starts_with(&*dir.to_string_lossy()))
                .map(|s| s.users as u64)
                .sum()
        })
        .collect()
}

#[test]
fn users_spread_over_disks_by_weight_and_stay_reachable_when_weights_change() {
    let temp = tempfile::tempdir().unwrap();
    let dirs = vec![temp.path().join("fast"), temp.path().join("slow")];
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
    }
    let fast = format!("{}=3", dirs[0].display());
    let slow = format!("{}=1", dirs[1].display());
    let data = |dir: &std::path::Path| dir.display().to_string();
    let args = [
        "--data".to_owned(),
        data(&dirs[1]),
        "--disk-weight".to_owned(),
        fast.clone(),
        "--disk-weight".to_owned(),
        slow.clone(),
    ];
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    // The first --data is given by the helper; the second here.
    let node = Node::start(&dirs[0], &extra);
    node.bulk_users(800, "user");
    let counts = users_per_dir(&node, &dirs);
    assert_eq!(counts.iter().sum::<u64>(), 800, "{counts:?}");
    let share = counts[0] as f64 / 800.0;
    assert!(
        (0.68..0.82).contains(&share),
        "fast disk share {share}: {counts:?}"
    );
    let view = status(&node);
    assert_eq!(view.disks[0].weight, 3.0, "{view:?}");
    assert_eq!(view.disks[1].weight, 1.0, "{view:?}");
    // Mail for every user, then a restart with the weights reversed: everyone keeps their
    // place and their mail.
    let out = python(
        "cluster_mail.py",
        &[
            "deliver".into(),
            node.ip.clone(),
            node.smtp.to_string(),
            "w".into(),
            "40".into(),
        ],
    );
    assert!(out.contains("delivered 40"), "{out}");
    let (smtp, pop3, admin) = (node.smtp, node.pop3, node.admin);
    assert!(node.terminate().success());
    let reversed = [
        "--data".to_owned(),
        data(&dirs[1]),
        "--disk-weight".to_owned(),
        format!("{}=1", dirs[0].display()),
        "--disk-weight".to_owned(),
        format!("{}=3", dirs[1].display()),
    ];
    let extra: Vec<&str> = reversed.iter().map(String::as_str).collect();
    let node = Node::start_on(&dirs[0], smtp, pop3, admin, &extra);
    assert_eq!(users_per_dir(&node, &dirs), counts);
    let out = python(
        "cluster_mail.py",
        &[
            "check".into(),
            node.ip.clone(),
            node.pop3.to_string(),
            common::PASSWORD.into(),
            "40".into(),
            "w".into(),
        ],
    );
    assert!(out.contains("check ok 40"), "{out}");
    // New users now lean to the other disk.
    node.bulk_users(400, "later");
    let after = users_per_dir(&node, &dirs);
    let new_on_slow = after[1] - counts[1];
    assert!(new_on_slow > 250, "{counts:?} → {after:?}");
}

#[test]
fn bad_disk_weights_are_refused_clearly() {
    for (args, expected) in [
        (vec!["--disk-weight", "nonsense"], "expected DIR=WEIGHT"),
        (
            vec!["--disk-weight", "/elsewhere=2"],
            "not a data directory",
        ),
        (vec!["--disk-weight", "/x=-1"], "expected DIR=WEIGHT"),
    ] {
        assert_refused(&args, expected);
    }
}

#[test]
fn the_node_runs_on_the_settings_porcupine_tune_writes() {
    use porcupine_tune::{recommend, to_toml, DiskProbe};
    let temp = tempfile::tempdir().unwrap();
    let dirs = [temp.path().join("a"), temp.path().join("b")];
    // Measurements as the probe reports them: b is half as fast as a, and saturates with
    // 256 KiB batches and 4 writes in flight.
    let probe = |dir: &std::path::Path, device: u64, scale: f64| DiskProbe {
        dir: dir.to_path_buf(),
        device,
        append_mb_per_s: 800.0 * scale,
        sync_p50_us: 900,
        sync_p99_us: 2000,
        sync_max_us: 5000,
        batches: vec![
            (64 << 10, 100.0 * scale),
            (256 << 10, 400.0 * scale),
            (1 << 20, 420.0 * scale),
        ],
        depths: vec![(1, 300.0 * scale), (4, 800.0 * scale), (8, 810.0 * scale)],
    };
    let rec = recommend(&[probe(&dirs[0], 1, 1.0), probe(&dirs[1], 2, 0.5)]);
    let config = temp.path().join("tune.toml");
    std::fs::write(&config, to_toml(&rec, "porcupine-tune (test)").unwrap()).unwrap();
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
    }
    // The snippet names both directories; the helper's --data flag wins over the file's, so
    // the node is started with the file's list here.
    let node = Node::start(
        &dirs[0],
        &[
            "--data",
            &dirs[1].display().to_string(),
            "--config",
            &config.display().to_string(),
        ],
    );
    let view = status(&node);
    assert_eq!(view.engine.batch_kib, 256, "{view:?}");
    assert_eq!(view.engine.io_depth, 4, "{view:?}");
    assert_eq!(view.engine.commit_window_us, 0, "{view:?}");
    assert_eq!(view.disks[0].weight, 1.0, "{view:?}");
    assert_eq!(view.disks[1].weight, 0.5, "{view:?}");
    node.bulk_users(600, "user");
    let counts = users_per_dir(&node, &dirs);
    let share = counts[0] as f64 / 600.0;
    assert!((0.58..0.75).contains(&share), "{counts:?}");
}
