//! `porcupine-tune`: probes each data directory through io_uring and recommends the node's
//! disk settings. This library holds what the probes measured and the rules that turn it into
//! settings (no I/O, so the rules are unit-tested); `src/bin/porcupine-tune.rs` does the
//! probing. See `tuning/README.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

use porcupine_tools::serve_config::ServeArgs;
use serde::Serialize;

/// What the probes measured on one data directory.
#[derive(Clone, Debug, Serialize)]
pub struct DiskProbe {
    pub dir: PathBuf,
    /// The device the directory is on (`st_dev`): directories on one device share its speed.
    pub device: u64,
    /// Sequential `O_DIRECT` writes of 1 MiB, one in flight, then one `fdatasync`: MB/s.
    pub append_mb_per_s: f64,
    /// A 4 KiB write then `fdatasync`, again and again: latency percentiles in µs.
    pub sync_p50_us: u64,
    pub sync_p99_us: u64,
    pub sync_max_us: u64,
    /// Group commits of each batch size: (batch bytes, MB/s) with one write + one
    /// `fdatasync` per batch.
    pub batches: Vec<(usize, f64)>,
    /// 128 KiB writes with this many in flight: (depth, MB/s).
    pub depths: Vec<(usize, f64)>,
}

/// The settings the probes lead to, as the node reads them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// Each directory's share of new users: its group-commit throughput at `batch_kib`,
    /// relative to the fastest directory's.
    pub weights: Vec<(PathBuf, f64)>,
    pub batch_kib: usize,
    pub commit_window_us: u64,
    pub io_depth: usize,
}

/// A setting "saturates" once it reaches this fraction of the best throughput measured.
pub const SATURATION: f64 = 0.9;

/// The smallest setting (batch bytes, or depth) whose throughput is at least [`SATURATION`] of
/// the best one; the largest setting if nothing was measured well.
pub fn saturating(points: &[(usize, f64)]) -> Option<usize> {
    let best = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut sorted = points.to_vec();
    sorted.sort_by_key(|p| p.0);
    if best <= 0.0 {
        return sorted.last().map(|p| p.0);
    }
    sorted
        .iter()
        .find(|p| p.1 >= SATURATION * best)
        .map(|p| p.0)
}

/// Throughput at `setting`, or at the nearest measured one below it.
fn at_or_below(points: &[(usize, f64)], setting: usize) -> f64 {
    points
        .iter()
        .filter(|p| p.0 <= setting)
        .max_by_key(|p| p.0)
        .or_else(|| points.iter().min_by_key(|p| p.0))
        .map_or(0.0, |p| p.1)
}

/// The rules:
/// - batch: the largest of each directory's saturating batch (every disk reaches its
///   bandwidth), at least 64 KiB;
/// - weights: each directory's group-commit MB/s at that batch, relative to the fastest;
///   directories on one device get the mean of theirs (they share one disk, and measuring them
///   one after the other only adds noise);
/// - commit window: 0 (the writer batches whatever arrives during a sync) unless syncs are so
///   fast (p50 under 100 µs: a write cache with power-loss protection) that batches stay tiny;
///   then about one sync time, so each batch gathers more appends;
/// - io depth: the largest of each directory's saturating depth.
pub fn recommend(probes: &[DiskProbe]) -> Recommendation {
    let batch = probes
        .iter()
        .filter_map(|p| saturating(&p.batches))
        .max()
        .unwrap_or(1 << 20)
        .max(64 << 10);
    let measured: Vec<f64> = probes
        .iter()
        .map(|p| at_or_below(&p.batches, batch))
        .collect();
    let rates: Vec<f64> = probes
        .iter()
        .map(|p| {
            let same: Vec<f64> = probes
                .iter()
                .zip(&measured)
                .filter(|(q, _)| q.device == p.device)
                .map(|(_, r)| *r)
                .collect();
            same.iter().sum::<f64>() / same.len().max(1) as f64
        })
        .collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    let weights = probes
        .iter()
        .zip(&rates)
        .map(|(p, rate)| {
            let weight = if best > 0.0 { rate / best } else { 1.0 };
            (p.dir.clone(), ((weight * 100.0).round() / 100.0).max(0.01))
        })
        .collect();
    let mut p50s: Vec<u64> = probes.iter().map(|p| p.sync_p50_us).collect();
    p50s.sort_unstable();
    let median_p50 = p50s.get(p50s.len() / 2).copied().unwrap_or(0);
    let commit_window_us = if median_p50 > 0 && median_p50 < 100 {
        median_p50
    } else {
        0
    };
    let io_depth = probes
        .iter()
        .filter_map(|p| saturating(&p.depths))
        .max()
        .unwrap_or(1)
        .clamp(1, 64);
    Recommendation {
        weights,
        batch_kib: batch >> 10,
        commit_window_us,
        io_depth,
    }
}

/// The settings as `porcupine serve` reads them ([`ServeArgs`], the schema of its flags and of
/// its `--config` file).
pub fn to_serve_args(rec: &Recommendation) -> ServeArgs {
    ServeArgs {
        data: rec.weights.iter().map(|(dir, _)| dir.clone()).collect(),
        disk_weight: rec
            .weights
            .iter()
            .map(|(dir, weight)| format!("{}={weight}", dir.display()))
            .collect(),
        batch_kib: Some(rec.batch_kib),
        commit_window_us: Some(rec.commit_window_us),
        io_depth: Some(rec.io_depth),
        ..ServeArgs::default()
    }
}

/// The `porcupine serve --config` file of the settings, under `header` as comments.
pub fn to_toml(rec: &Recommendation, header: &str) -> Result<String, toml::ser::Error> {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    out.push_str(&to_serve_args(rec).to_toml()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(dir: &str, scale: f64, sync_p50_us: u64) -> DiskProbe {
        DiskProbe {
            dir: dir.into(),
            device: dir.len() as u64 * 1000 + (scale * 100.0) as u64,
            append_mb_per_s: 500.0 * scale,
            sync_p50_us,
            sync_p99_us: sync_p50_us * 3,
            sync_max_us: sync_p50_us * 10,
            batches: [
                (4 << 10, 20.0),
                (64 << 10, 150.0),
                (256 << 10, 380.0),
                (1 << 20, 400.0),
            ]
            .map(|(b, r)| (b, r * scale))
            .to_vec(),
            depths: [(1, 300.0), (4, 950.0), (8, 1000.0), (16, 1010.0)]
                .map(|(d, r)| (d, r * scale))
                .to_vec(),
        }
    }

    #[test]
    fn the_smallest_setting_near_the_best_saturates() {
        assert_eq!(saturating(&[(1, 10.0), (2, 95.0), (4, 100.0)]), Some(2));
        assert_eq!(saturating(&[(4, 100.0), (1, 10.0)]), Some(4));
        assert_eq!(saturating(&[(1, 0.0), (8, 0.0)]), Some(8));
        assert_eq!(saturating(&[]), None);
    }

    #[test]
    fn weights_follow_group_commit_throughput_and_settings_follow_the_probes() {
        let rec = recommend(&[probe("/fast", 1.0, 2_000), probe("/slow", 0.25, 8_000)]);
        assert_eq!(rec.batch_kib, 256);
        assert_eq!(
            rec.weights,
            vec![("/fast".into(), 1.0), ("/slow".into(), 0.25)]
        );
        assert_eq!(rec.io_depth, 4);
        // Slow syncs: no commit window; batches form while a sync is in flight.
        assert_eq!(rec.commit_window_us, 0);
        // Syncs absorbed by a protected write cache: a window of about one sync.
        assert_eq!(recommend(&[probe("/nvme", 1.0, 40)]).commit_window_us, 40);
    }

    #[test]
    fn directories_on_one_device_share_its_weight() {
        let mut a = probe("/one/a", 1.0, 2_000);
        let mut b = probe("/one/b", 0.5, 2_000);
        a.device = 7;
        b.device = 7;
        let rec = recommend(&[a, b, probe("/other", 1.5, 2_000)]);
        let weight = |i: usize| rec.weights[i].1;
        assert_eq!(weight(0), weight(1));
        assert_eq!(weight(2), 1.0);
        assert_eq!(weight(0), 0.5);
    }

    #[test]
    fn the_snippet_is_a_config_the_node_reads() {
        let rec = recommend(&[probe("/data/a", 1.0, 2_000), probe("/data/b", 0.5, 2_000)]);
        let text = to_toml(&rec, "porcupine-tune\nmeasured here").unwrap();
        assert!(text.starts_with("# porcupine-tune\n# measured here\n"));
        // Read back by the node's own reader of `--config` files.
        let parsed = porcupine_tools::serve_config::parse(&text).expect("a config the node reads");
        assert_eq!(
            parsed.data,
            vec![PathBuf::from("/data/a"), "/data/b".into()]
        );
        assert_eq!(parsed.disk_weight, vec!["/data/a=1", "/data/b=0.5"]);
        assert_eq!(
            (parsed.batch_kib, parsed.commit_window_us, parsed.io_depth),
            (Some(256), Some(0), Some(4))
        );
        assert_eq!(parsed, to_serve_args(&rec));
    }
}
