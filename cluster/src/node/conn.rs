//! What every connection edge shares: reading with an idle timeout while watching for the
//! node's stop signal, and the per-core connection limit.

use std::cell::Cell;
use std::rc::Rc;

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

/// What a read produced.
#[derive(Debug)]
pub enum Read {
    Bytes(usize),
    /// The peer closed, the read failed, or it timed out.
    Closed,
    /// The node is stopping.
    Stop,
}

pub async fn read(stream: &mut TcpStream, buf: &mut [u8], stop: &flume::Receiver<()>) -> Read {
    let reading = async {
        match stream.read(buf).await {
            Ok(0) | Err(_) => Read::Closed,
            Ok(n) => Read::Bytes(n),
        }
    };
    let stopping = async {
        let _ = stop.recv_async().await;
        Read::Stop
    };
    futures_lite::future::or(reading, stopping).await
}

/// Counts open connections on one core; a guard per connection.
#[derive(Clone, Debug, Default)]
pub struct ConnectionCount(Rc<Cell<usize>>);

#[derive(Debug)]
pub struct ConnectionGuard(Rc<Cell<usize>>);

impl ConnectionCount {
    /// A guard if fewer than `max` connections are open.
    pub fn try_enter(&self, max: usize) -> Option<ConnectionGuard> {
        if self.0.get() >= max {
            return None;
        }
        self.0.set(self.0.get() + 1);
        Some(ConnectionGuard(self.0.clone()))
    }

    pub fn open(&self) -> usize {
        self.0.get()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
