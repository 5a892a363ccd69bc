//! Engine settings: every limit has a name with its unit and a sane default.

use std::time::Duration;

use crate::record::PAYLOAD_BYTES_MAX;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Fixed length of every segment file; a segment is sealed when the next record does not fit.
    pub segment_bytes: u64,
    /// A group-commit batch holds at most this many bytes (a larger record gets a batch alone).
    pub batch_bytes_max: usize,
    /// Appends wait (back-pressure) while this many bytes are queued and not yet durable.
    pub queue_bytes_max: usize,
    /// How long the writer lets a batch gather before writing it; zero writes as soon as the
    /// previous batch is durable (batches then form from whatever arrived meanwhile).
    pub commit_window: Duration,
    /// Largest record (user name + body) accepted.
    pub record_bytes_max: usize,
    /// A checkpoint of the index is written after this many bytes of log.
    pub checkpoint_every_bytes: u64,
    /// Writes in flight while a segment is written out ahead of the log.
    pub io_depth: usize,
    /// Bytes of the newest durable batches kept in memory for reads (0: none); see
    /// `recent.rs`. Mail fetched soon after delivery then needs no disk read.
    pub read_cache_bytes: usize,
    /// Node id written into every record (the node sets its own; 0 in engine-only tools).
    pub node_id: u32,
    /// The unit of the log's writes: each group commit writes whole blocks from the block
    /// holding the log's end, so a commit costs up to a block more than its records. 0: the
    /// device's logical block size (512 on most disks: a small commit then writes about 512
    /// bytes more than its records, not 4 KiB). A power of two from 512 to 4096, and at least
    /// the device's logical block size.
    pub write_block_bytes: usize,
    pub compaction: CompactionConfig,
    /// Derives a put's annex from its body as the message is stored (see [`crate::record`]);
    /// `None`: puts carry none.
    pub annotate: Option<Annotator>,
}

/// What the engine calls on a message's body, as it is stored, to make its annex: appends
/// the annex to the buffer (at most [`crate::record::ANNEX_BYTES_MAX`] bytes are kept; a
/// longer one is dropped whole).
#[derive(Clone, Copy)]
pub struct Annotator(pub fn(&[u8], &mut Vec<u8>));

impl std::fmt::Debug for Annotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Annotator")
    }
}

#[derive(Clone, Debug)]
pub struct CompactionConfig {
    /// Sealed segments whose live fraction falls below this are copied forward.
    pub live_fraction_min: f64,
    /// Bytes per second compaction may read; its writes are bounded by the same budget.
    pub rate_bytes_per_s: u64,
    /// How often a shard looks for a segment to compact; zero turns background compaction off.
    pub check_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 128 << 20,
            batch_bytes_max: 1 << 20,
            queue_bytes_max: 64 << 20,
            commit_window: Duration::ZERO,
            record_bytes_max: PAYLOAD_BYTES_MAX,
            checkpoint_every_bytes: 512 << 20,
            io_depth: 1,
            read_cache_bytes: 64 << 20,
            node_id: 0,
            write_block_bytes: 0,
            annotate: None,
            compaction: CompactionConfig::default(),
        }
    }
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            live_fraction_min: 0.5,
            rate_bytes_per_s: 32 << 20,
            check_interval: Duration::from_secs(10),
        }
    }
}

impl EngineConfig {
    /// Checks the settings against each other; the message names the setting to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes % 4096 != 0 || self.segment_bytes < 64 * 1024 {
            return Err(format!(
                "segment_bytes must be a multiple of 4096 and at least 64 KiB (got {})",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > crate::segment::SEGMENT_BYTES_MAX {
            return Err(format!(
                "segment_bytes may be at most {} (4 GiB: a record's location is a 32-bit \
                 offset; got {})",
                crate::segment::SEGMENT_BYTES_MAX,
                self.segment_bytes
            ));
        }
        let largest = crate::record::encoded_len(
            crate::record::USER_BYTES_MAX,
            crate::record::REPLICAS_MAX,
            self.record_bytes_max,
        );
        if largest as u64 + crate::segment::SEGMENT_HEADER_BYTES > self.segment_bytes {
            return Err(format!(
                "record_bytes_max ({}) must fit in a segment (segment_bytes {})",
                self.record_bytes_max, self.segment_bytes
            ));
        }
        if self.record_bytes_max > PAYLOAD_BYTES_MAX {
            return Err(format!(
                "record_bytes_max may be at most {PAYLOAD_BYTES_MAX}"
            ));
        }
        if self.batch_bytes_max < 4096 || self.queue_bytes_max < self.batch_bytes_max {
            return Err("batch_bytes_max must be >= 4096 and <= queue_bytes_max".into());
        }
        if self.write_block_bytes != 0
            && !(self.write_block_bytes.is_power_of_two()
                && (512..=crate::writer::BLOCK_BYTES).contains(&self.write_block_bytes))
        {
            return Err(format!(
                "write_block_bytes must be 0 (the device's) or a power of two from 512 to 4096 \
                 (got {})",
                self.write_block_bytes
            ));
        }
        if self.io_depth == 0 || self.io_depth > 64 {
            return Err(format!(
                "io_depth must be between 1 and 64 (got {})",
                self.io_depth
            ));
        }
        if !(0.0..=1.0).contains(&self.compaction.live_fraction_min) {
            return Err("compaction.live_fraction_min must be between 0 and 1".into());
        }
        Ok(())
    }
}
