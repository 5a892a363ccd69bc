//! What a shard measures about itself: group-commit batch sizes, sync and ack latency.

use std::time::Duration;

use hdrhistogram::Histogram;

#[derive(Debug)]
pub struct ShardMetrics {
    pub records: u64,
    pub bytes: u64,
    pub syncs: u64,
    pub batches: u64,
    pub failed_batches: u64,
    pub compacted_segments: u64,
    pub compacted_bytes: u64,
    /// Segments made from an emptied one (no zeros written).
    pub recycled_segments: u64,
    /// Segments written out with zeros, and those zeros' bytes (the log's second write).
    pub created_segments: u64,
    pub zeroed_bytes: u64,
    /// Index checkpoints written, and their bytes.
    pub checkpoints: u64,
    pub checkpoint_bytes: u64,
    records_per_sync: Histogram<u64>,
    sync_micros: Histogram<u64>,
    ack_micros: Histogram<u64>,
}

/// Latency quantiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// Upper bounds, in microseconds, of the latency histograms' buckets (as `/metrics` shows
/// them: a Prometheus histogram per shard).
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A latency histogram since the shard opened: the count in each bucket of
/// [`LATENCY_BOUNDS_US`] (one more at the end: above the last bound), their sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyBuckets {
    pub counts: Vec<u64>,
    pub sum_micros: f64,
    pub count: u64,
}

fn buckets(h: &Histogram<u64>) -> LatencyBuckets {
    let mut counts = Vec::with_capacity(LATENCY_BOUNDS_US.len() + 1);
    let mut below = 0;
    for bound in LATENCY_BOUNDS_US {
        let upto = h.count_between(0, bound);
        counts.push(upto.saturating_sub(below));
        below = below.max(upto);
    }
    counts.push(h.len().saturating_sub(below));
    LatencyBuckets {
        counts,
        sum_micros: h.mean() * h.len() as f64,
        count: h.len(),
    }
}

/// A copy of a shard's metrics at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub records: u64,
    pub bytes: u64,
    pub syncs: u64,
    pub batches: u64,
    pub failed_batches: u64,
    pub compacted_segments: u64,
    pub compacted_bytes: u64,
    pub recycled_segments: u64,
    pub created_segments: u64,
    pub zeroed_bytes: u64,
    pub checkpoints: u64,
    pub checkpoint_bytes: u64,
    pub records_per_sync: Quantiles,
    pub sync_micros: Quantiles,
    pub ack_micros: Quantiles,
    pub sync_buckets: LatencyBuckets,
    pub ack_buckets: LatencyBuckets,
}

fn histogram() -> Histogram<u64> {
    // Three significant figures up to an hour in microseconds; creation cannot fail with these bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

fn quantiles(h: &Histogram<u64>) -> Quantiles {
    Quantiles {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: h.mean(),
    }
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardMetrics {
    pub fn new() -> Self {
        Self {
            records: 0,
            bytes: 0,
            syncs: 0,
            batches: 0,
            failed_batches: 0,
            compacted_segments: 0,
            compacted_bytes: 0,
            recycled_segments: 0,
            created_segments: 0,
            zeroed_bytes: 0,
            checkpoints: 0,
            checkpoint_bytes: 0,
            records_per_sync: histogram(),
            sync_micros: histogram(),
            ack_micros: histogram(),
        }
    }

    pub fn record_batch(&mut self, batches: u64, records: u64, bytes: u64, sync: Duration) {
        self.batches += batches;
        self.syncs += 1;
        self.records += records;
        self.bytes += bytes;
        let _ = self.records_per_sync.record(records.max(1));
        let _ = self.sync_micros.record((sync.as_micros() as u64).max(1));
    }

    pub fn record_ack(&mut self, latency: Duration) {
        let _ = self.ack_micros.record((latency.as_micros() as u64).max(1));
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            records: self.records,
            bytes: self.bytes,
            syncs: self.syncs,
            batches: self.batches,
            failed_batches: self.failed_batches,
            compacted_segments: self.compacted_segments,
            compacted_bytes: self.compacted_bytes,
            recycled_segments: self.recycled_segments,
            created_segments: self.created_segments,
            zeroed_bytes: self.zeroed_bytes,
            checkpoints: self.checkpoints,
            checkpoint_bytes: self.checkpoint_bytes,
            records_per_sync: quantiles(&self.records_per_sync),
            sync_micros: quantiles(&self.sync_micros),
            ack_micros: quantiles(&self.ack_micros),
            sync_buckets: buckets(&self.sync_micros),
            ack_buckets: buckets(&self.ack_micros),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_latency_once() {
        let mut m = ShardMetrics::new();
        for micros in [10, 60, 60, 900, 3_000_000, 20_000_000] {
            m.record_ack(Duration::from_micros(micros));
        }
        let b = m.snapshot().ack_buckets;
        assert_eq!(b.counts.len(), LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(b.counts.iter().sum::<u64>(), 6);
        assert_eq!(b.count, 6);
        assert_eq!(b.counts[0], 1, "10 µs ≤ 50");
        assert_eq!(b.counts[1], 2, "60 µs ≤ 100");
        assert_eq!(b.counts[4], 1, "900 µs ≤ 1 ms");
        assert_eq!(b.counts[15], 1, "3 s ≤ 10 s");
        assert_eq!(b.counts[16], 1, "20 s above every bound");
        assert!(
            (b.sum_micros - 23_001_030.0).abs() / 23_001_030.0 < 0.01,
            "{}",
            b.sum_micros
        );
    }
}
