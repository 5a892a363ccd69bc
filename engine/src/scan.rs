//! Reads a segment's records in order, verifying each, and says where and why it stopped.
//!
//! Used by recovery (every record after the checkpoint) and by compaction (every record of a
//! sealed segment). A scan ends at a zero header (the clean end), at the segment's end, or at
//! the first record that fails a check. With `resync` it instead skips forward on 8-byte
//! boundaries to the next valid record and reports the damaged range; while skipping, a run of
//! zeros longer than [`Scanner::zero_run_max`] ends the scan (past the log's end a segment
//! holds only zeros, and nothing inside the log is zero for that long: no record is that large
//! and no unfinished write group leaves a hole that wide).
//!
//! In a recycled segment ([`crate::segment`]) the log's end is followed by the records of the
//! file's earlier life rather than zeros. A valid record naming another segment ends the scan
//! cleanly; bytes skipped on the way to it are damage only if they start where a record of this
//! segment could (not at a block boundary, or with a record's magic): the writer pads every
//! write to a block with zeros, so the earlier life's bytes begin on a block boundary.

use crate::error::Result;
use crate::record::{self, DecodeError, RecordView, HEADER_BYTES, RECORD_ALIGN};
use crate::storage::StorageFile;

const READ_CHUNK_BYTES: usize = 1 << 20;

/// Why a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// A zero header or the end of the segment: everything before was intact.
    Clean,
    /// A record failed a check at `offset`: everything from there on is untrusted.
    Damaged { offset: u64, error: DecodeError },
}

/// A range skipped while resynchronising a sealed segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedRange {
    pub offset: u64,
    pub bytes: u64,
    pub error: DecodeError,
}

#[derive(Debug)]
pub struct Scanner<'f, F> {
    file: &'f F,
    window: Vec<u8>,
    window_start: u64,
    pos: u64,
    /// Just past the last good record returned (`pos` runs ahead while skipping damage).
    good_end: u64,
    limit: u64,
    resync: bool,
    zero_run_max: u64,
    /// The segment scanned and whether its file may hold an earlier life's records; `None`:
    /// no record is checked against its segment.
    segment: Option<(u32, bool)>,
    /// The unit the log was written in: a write ends on a multiple of it.
    write_block: u64,
    stop: Option<ScanStop>,
    pub skipped: Vec<SkippedRange>,
}

enum Verdict {
    Good(usize),
    Bad(DecodeError),
}

impl<'f, F: StorageFile> Scanner<'f, F> {
    /// Scans `[start, limit)` of `file`.
    pub fn new(file: &'f F, start: u64, limit: u64, resync: bool) -> Self {
        Self {
            file,
            window: Vec::new(),
            window_start: start,
            pos: start,
            good_end: start,
            limit,
            resync,
            zero_run_max: u64::MAX,
            segment: None,
            write_block: crate::writer::BLOCK_BYTES as u64,
            stop: None,
            skipped: Vec::new(),
        }
    }

    /// While skipping damage, this many bytes of zeros in a row end the scan (default: never).
    pub fn zero_run_max(mut self, bytes: u64) -> Self {
        self.zero_run_max = bytes;
        self
    }

    /// Checks every record against segment `seq`, which is `recyclable` if its header says so
    /// and was written in blocks of `write_block` bytes.
    pub fn segment(mut self, seq: u32, recyclable: bool, write_block: u64) -> Self {
        self.segment = Some((seq, recyclable));
        self.write_block = write_block.max(1);
        self
    }

    /// The offset just past the last good record returned.
    pub fn position(&self) -> u64 {
        self.good_end
    }

    /// Why the scan stopped (once `next` returned `None`).
    pub fn stop(&self) -> Option<ScanStop> {
        self.stop
    }

    /// Makes the window hold `[pos, pos + need)` if the segment has that many bytes.
    async fn fill(&mut self, need: usize) -> Result<bool> {
        let have_end = self.window_start + self.window.len() as u64;
        if self.pos + need as u64 <= have_end {
            return Ok(true);
        }
        if self.pos + need as u64 > self.limit {
            return Ok(false);
        }
        let consumed = (self.pos - self.window_start) as usize;
        self.window.drain(..consumed.min(self.window.len()));
        self.window_start = self.pos;
        while self.window.len() < need {
            let read_at = self.window_start + self.window.len() as u64;
            let want = READ_CHUNK_BYTES
                .max(need - self.window.len())
                .min((self.limit - read_at) as usize);
            let chunk = self.file.read_at(read_at, want).await?;
            if chunk.is_empty() {
                return Ok(false);
            }
            self.window.extend_from_slice(&chunk);
        }
        Ok(true)
    }

    /// Whether damage starting at `offset` may have held records of this segment: anywhere in
    /// a segment that is never recycled; in a recycled one, unless it starts on a block
    /// boundary, or after zeros up to one (a write ends on a block boundary, padded with
    /// zeros), without a record's magic there.
    fn could_be_ours(&self, offset: u64) -> bool {
        if !self.segment.is_some_and(|(_, recyclable)| recyclable) {
            return true;
        }
        let Some(at) = offset.checked_sub(self.window_start) else {
            return true;
        };
        let block_end = offset.next_multiple_of(self.write_block);
        let padding = (block_end - offset) as usize;
        let from = at as usize;
        let Some(bytes) = self.window.get(from..from + padding + 4) else {
            return true;
        };
        let (padding, next) = bytes.split_at(padding);
        padding.iter().any(|&b| b != 0) || next == record::RECORD_MAGIC.to_le_bytes()
    }

    /// The next intact record and its offset, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<(u64, RecordView<'_>)>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        let mut skip_from: Option<(u64, DecodeError, bool)> = None;
        let mut zeros_from: Option<u64> = None;
        let len = loop {
            let verdict = if !self.fill(HEADER_BYTES).await? {
                Verdict::Bad(DecodeError::End)
            } else {
                let at = (self.pos - self.window_start) as usize;
                match record::check_header(&self.window[at..]) {
                    Ok((_, len)) if self.pos + len as u64 > self.limit => {
                        Verdict::Bad(DecodeError::Short {
                            needed: len,
                            have: (self.limit - self.pos) as usize,
                        })
                    }
                    Ok((_, len)) => {
                        if !self.fill(len).await? {
                            Verdict::Bad(DecodeError::Short {
                                needed: len,
                                have: 0,
                            })
                        } else {
                            let at = (self.pos - self.window_start) as usize;
                            match record::decode(&self.window[at..at + len]) {
                                Ok(view) => match self.segment {
                                    Some((seq, recyclable)) => {
                                        match view.check_segment(seq, recyclable) {
                                            Ok(()) => Verdict::Good(len),
                                            Err(e) => Verdict::Bad(e),
                                        }
                                    }
                                    None => Verdict::Good(len),
                                },
                                Err(e) => Verdict::Bad(e),
                            }
                        }
                    }
                    Err(e) => Verdict::Bad(e),
                }
            };
            match verdict {
                Verdict::Good(len) => break len,
                Verdict::Bad(DecodeError::Stale { .. }) => {
                    // The earlier life of a recycled file: the log ended before it.
                    if let Some((from, error, ours)) = skip_from {
                        if ours {
                            self.skipped.push(SkippedRange {
                                offset: from,
                                bytes: self.pos - from,
                                error,
                            });
                        }
                    }
                    self.stop = Some(ScanStop::Clean);
                    return Ok(None);
                }
                Verdict::Bad(error) => {
                    if error == DecodeError::End {
                        zeros_from.get_or_insert(self.pos);
                    } else {
                        zeros_from = None;
                    }
                    let at_end = self.pos + HEADER_BYTES as u64 > self.limit;
                    let clean_end = error == DecodeError::End && skip_from.is_none();
                    let past_the_log = zeros_from.is_some_and(|from| {
                        self.pos + HEADER_BYTES as u64 - from > self.zero_run_max
                    });
                    if !self.resync || at_end || clean_end || past_the_log {
                        if let Some((from, error, ours)) = skip_from {
                            // The damage ends where the zeros past the log begin.
                            let until = zeros_from.unwrap_or(self.pos).max(from);
                            if ours {
                                self.skipped.push(SkippedRange {
                                    offset: from,
                                    bytes: until - from,
                                    error,
                                });
                            }
                            self.stop = Some(ScanStop::Clean);
                        } else {
                            self.stop = Some(match error {
                                DecodeError::End => ScanStop::Clean,
                                error => ScanStop::Damaged {
                                    offset: self.pos,
                                    error,
                                },
                            });
                        }
                        return Ok(None);
                    }
                    if skip_from.is_none() && error != DecodeError::End {
                        skip_from = Some((self.pos, error, self.could_be_ours(self.pos)));
                    }
                    self.pos += RECORD_ALIGN as u64;
                }
            }
        };
        if let Some((from, error, _)) = skip_from {
            self.skipped.push(SkippedRange {
                offset: from,
                bytes: self.pos - from,
                error,
            });
        }
        let offset = self.pos;
        self.pos += len as u64;
        self.good_end = self.pos;
        let at = (offset - self.window_start) as usize;
        match record::decode(&self.window[at..at + len]) {
            Ok(view) => Ok(Some((offset, view))),
            // Verified a moment ago in this same buffer.
            Err(error) => {
                self.stop = Some(ScanStop::Damaged { offset, error });
                Ok(None)
            }
        }
    }
}
