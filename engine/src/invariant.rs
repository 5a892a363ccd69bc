//! Runtime checks of the engine's invariants, on in release builds too: where the index says a
//! record is (inside its segment's written length, the record there being the one asked for),
//! and what the writer is about to write and acknowledge (positions that only grow, stay
//! aligned and follow the durable end; batches whose records fill them exactly; the durable
//! position never passing what was written; the queued-bytes and live-bytes bookkeeping).
//!
//! A violation is a bug in the engine (or damaged memory), never a property of the input. The
//! serving path must not panic on it: [`violated`] logs it with `tracing::error!` and returns
//! [`EngineError::Invariant`], and the caller poisons the shard (`writer::poison`): writes are
//! refused from then on, as after a failed `fdatasync`, until a restart rebuilds the shard from
//! the log. Debug builds also panic at the violation so tests catch it where it happens —
//! except this crate's own unit tests, which provoke violations to check the typed error.

use crate::error::EngineError;

/// Reports a violated invariant of shard `shard`; see the [module docs](self).
#[track_caller]
pub(crate) fn violated(shard: &str, what: String) -> EngineError {
    let at = std::panic::Location::caller();
    tracing::error!(shard, %what, %at, "engine invariant violated: the shard stops accepting writes");
    if cfg!(all(debug_assertions, not(test))) {
        panic!("engine invariant violated in shard {shard} at {at}: {what}");
    }
    EngineError::Invariant {
        shard: shard.to_owned(),
        what,
    }
}

/// `invariant!(shard, condition, "format", args..)`: `Ok(())` if the condition holds, else the
/// typed error from [`violated`] (the message formatted only then).
macro_rules! invariant {
    ($shard:expr, $cond:expr, $($what:tt)+) => {
        if $cond {
            Ok(())
        } else {
            Err($crate::invariant::violated($shard, format!($($what)+)))
        }
    };
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::Path;
    use std::pin::Pin;
    use std::task::Poll;

    use crate::config::EngineConfig;
    use crate::error::EngineError;
    use crate::executor::PlainExecutor;
    use crate::memory_storage::MemoryStorage;
    use crate::shard::Shard;

    fn config() -> EngineConfig {
        EngineConfig {
            segment_bytes: 64 << 10,
            batch_bytes_max: 16 << 10,
            queue_bytes_max: 256 << 10,
            record_bytes_max: 32 << 10,
            checkpoint_every_bytes: u64::MAX,
            ..EngineConfig::default()
        }
    }

    /// Runs `test` against a fresh shard on memory storage, without io_uring.
    fn with_shard<F: Future<Output = ()>>(test: impl FnOnce(Shard<MemoryStorage>) -> F) {
        PlainExecutor::new().run(async {
            let (shard, _) = Shard::open(MemoryStorage::new(), Path::new("/s"), config(), "s")
                .await
                .unwrap();
            test(shard).await;
        });
    }

    async fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        let mut future = Some(future);
        std::future::poll_fn(|cx| Poll::Ready(future.take().map(|f| f.poll(cx))))
            .await
            .unwrap_or(Poll::Pending)
    }

    fn assert_invariant(result: Result<impl std::fmt::Debug, EngineError>, says: &str) {
        match result {
            Err(EngineError::Invariant { shard, what }) => {
                assert_eq!(shard, "s");
                assert!(what.contains(says), "{what:?} does not say {says:?}");
            }
            other => panic!("expected an invariant violation, got {other:?}"),
        }
    }

    /// The shard is poisoned: it refuses writes, naming the violation, and says so in stats.
    async fn assert_poisoned(shard: &Shard<MemoryStorage>) {
        let cause = shard.stats().poisoned.expect("poisoned");
        assert!(cause.contains("invariant violated"), "{cause}");
        match shard.append_message("late@x", 99, b"late", 0).await {
            Err(EngineError::Poisoned { cause, .. }) => {
                assert!(cause.contains("invariant violated"), "{cause}")
            }
            other => panic!("a poisoned shard took a write: {other:?}"),
        }
    }

    #[test]
    fn an_index_entry_past_its_segments_end_is_an_error_and_poisons_the_shard() {
        with_shard(|shard| async move {
            let entry = shard.append_message("a@x", 1, b"hello", 0).await.unwrap();
            let end = shard.stats().durable_offset as u32;
            {
                let mut state = shard.inner.state.borrow_mut();
                let mut moved = entry;
                moved.location.offset = end + 4096;
                state.index.put("a@x", moved);
            }
            assert_invariant(shard.read_message("a@x", 1).await, "beyond the");
            assert_poisoned(&shard).await;
            // Reads of what the index has right keep being served.
            assert_eq!(shard.read(entry.location).await.unwrap().body(), b"hello");
        });
    }

    #[test]
    fn an_index_entry_pointing_at_another_record_is_never_served() {
        with_shard(|shard| async move {
            shard.append_message("a@x", 1, b"mine", 0).await.unwrap();
            let other = shard
                .append_message("b@x", 2, b"not yours", 0)
                .await
                .unwrap();
            {
                let mut state = shard.inner.state.borrow_mut();
                let mut entry = *state.index.message("a@x", 1).unwrap();
                entry.location = other.location;
                state.index.put("a@x", entry);
            }
            assert_invariant(shard.read_message("a@x", 1).await, "which holds");
            assert_poisoned(&shard).await;
        });
    }

    #[test]
    fn a_misaligned_append_position_fails_the_append_and_poisons_the_shard() {
        with_shard(|shard| async move {
            shard.append_message("a@x", 1, b"one", 0).await.unwrap();
            shard.inner.state.borrow_mut().append_pos += 3;
            assert_invariant(
                shard.append_message("a@x", 2, b"two", 0).await,
                "misaligned",
            );
            assert_poisoned(&shard).await;
            shard.close().await.unwrap();
        });
    }

    #[test]
    fn queued_bytes_bookkeeping_that_goes_below_zero_fails_the_batch() {
        with_shard(|shard| async move {
            let mut append = Box::pin(shard.append_message("a@x", 1, b"one", 0));
            // Queued, not yet taken by the writer: then the count of queued bytes is lost.
            assert!(poll_once(append.as_mut()).await.is_pending());
            shard.inner.state.borrow_mut().queued_bytes = 0;
            assert_invariant(append.await, "bytes queued");
            assert_poisoned(&shard).await;
        });
    }

    #[test]
    fn the_writer_refuses_to_move_the_durable_end_back() {
        with_shard(|shard| async move {
            shard.append_message("a@x", 1, b"one", 0).await.unwrap();
            // The durable end runs ahead of what was written (as if bookkeeping went wrong):
            // the next batch would continue the log behind it.
            shard.inner.state.borrow_mut().durable.1 += 4096;
            assert_invariant(
                shard.append_message("a@x", 2, b"two", 0).await,
                "behind the durable end",
            );
            assert_poisoned(&shard).await;
        });
    }

    #[test]
    fn broken_live_bytes_accounting_poisons_at_the_next_commit() {
        with_shard(|shard| async move {
            let entry = shard.append_message("a@x", 1, b"one", 0).await.unwrap();
            // A segment forgotten while a record in it is live.
            shard
                .inner
                .state
                .borrow_mut()
                .index
                .forget_segment(entry.location.segment);
            assert_invariant(shard.delete_message("a@x", 1).await, "live bytes");
            assert_poisoned(&shard).await;
        });
    }
}
