//! Reads a segment's records in order, verifying each, and says where and why it stopped.
//!
//! Used by recovery (every record after the checkpoint) and by compaction (every record of a
//! sealed segment). A scan ends at a zero header (the clean end), at the segment's end, or at
//! the first record that fails a check. With `resync` (sealed segments) it instead skips
//! forward on 8-byte boundaries to the next valid record and reports the damaged range.

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
    limit: u64,
    resync: bool,
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
            limit,
            resync,
            stop: None,
            skipped: Vec::new(),
        }
    }

    /// The offset just past the last good record returned.
    pub fn position(&self) -> u64 {
        self.pos
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

    /// The next intact record and its offset, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<(u64, RecordView<'_>)>> {
        if self.stop.is_some() {
            return Ok(None);
        }
        let mut skip_from: Option<(u64, DecodeError)> = None;
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
                                Ok(_) => Verdict::Good(len),
                                Err(e) => Verdict::Bad(e),
                            }
                        }
                    }
                    Err(e) => Verdict::Bad(e),
                }
            };
            match verdict {
                Verdict::Good(len) => break len,
                Verdict::Bad(error) => {
                    let at_end = self.pos + HEADER_BYTES as u64 > self.limit;
                    let clean_end = error == DecodeError::End && skip_from.is_none();
                    if !self.resync || at_end || clean_end {
                        if let Some((from, error)) = skip_from {
                            self.skipped.push(SkippedRange {
                                offset: from,
                                bytes: self.pos - from,
                                error,
                            });
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
                        skip_from = Some((self.pos, error));
                    }
                    self.pos += RECORD_ALIGN as u64;
                }
            }
        };
        if let Some((from, error)) = skip_from {
            self.skipped.push(SkippedRange {
                offset: from,
                bytes: self.pos - from,
                error,
            });
        }
        let offset = self.pos;
        self.pos += len as u64;
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
