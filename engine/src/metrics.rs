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
        }
    }
}
