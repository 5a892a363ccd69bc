//! The state behind [`crate::abuse`] for this node's clients: one record per client address,
//! shared by the cores. It is touched when a connection opens or closes and when a login
//! fails, never per message, and split over several locks by address so cores rarely meet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::abuse::{self, AbuseSettings, Admission, IpRecord};

/// Locks the records are split over.
const SHARDS: usize = 16;
/// Records one shard keeps before it drops the idle ones.
const RECORDS_PER_SHARD_MAX: usize = 1 << 16;

#[derive(Debug)]
pub struct ClientLimits {
    /// Changed live (SIGHUP) by [`ClientLimits::set_settings`].
    settings: arc_swap::ArcSwap<AbuseSettings>,
    shards: Vec<Mutex<HashMap<IpAddr, IpRecord>>>,
    started: Instant,
}

/// A connection counted against its address; dropping it counts the connection closed.
#[derive(Debug)]
pub struct IpSlot {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.limits.with(self.ip, |record, _| record.leave());
    }
}

impl ClientLimits {
    pub fn new(settings: AbuseSettings) -> Self {
        Self {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            started: Instant::now(),
        }
    }

    /// New limits (SIGHUP): the next connection and login are judged by them; what each
    /// address did recently is kept.
    pub fn set_settings(&self, settings: AbuseSettings) {
        self.settings.store(std::sync::Arc::new(settings));
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` on the record of `ip` (made if missing).
    fn with<T>(&self, ip: IpAddr, f: impl FnOnce(&mut IpRecord, u64) -> T) -> T {
        let now = self.now_ms();
        let shard = &self.shards[shard_of(ip)];
        let mut records = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if records.len() >= RECORDS_PER_SHARD_MAX && !records.contains_key(&ip) {
            records.retain(|_, r| !r.idle(&self.settings.load(), now));
        }
        let record = records
            .entry(ip)
            .or_insert_with(|| IpRecord::new(&self.settings.load(), now));
        f(record, now)
    }

    /// A new connection from `ip`: its slot (`None` for an exempt address), or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, Admission> {
        if abuse::exempt(&self.settings.load(), ip) {
            return Ok(None);
        }
        match self.with(ip, |record, now| record.admit(&self.settings.load(), now)) {
            Admission::Admitted => Ok(Some(IpSlot {
                limits: self.clone(),
                ip,
            })),
            refused => Err(refused),
        }
    }

    /// How long a login from `ip` waits, given its recent failures.
    pub fn login_penalty(&self, ip: IpAddr) -> Duration {
        if abuse::exempt(&self.settings.load(), ip) {
            return Duration::ZERO;
        }
        self.with(ip, |record, now| abuse::penalty(record.failures.count(now)))
    }

    /// A login from `ip` failed: the next ones wait longer.
    pub fn login_failed(&self, ip: IpAddr) {
        if !abuse::exempt(&self.settings.load(), ip) {
            self.with(ip, |record, now| record.failures.failed(now));
        }
    }

    pub fn login_succeeded(&self, ip: IpAddr) {
        if !abuse::exempt(&self.settings.load(), ip) {
            self.with(ip, |record, _| record.failures.succeeded());
        }
    }
}

fn shard_of(ip: IpAddr) -> usize {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    (xxhash_rust::xxh3::xxh3_64(&bytes) % SHARDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_connections_and_loopback_is_exempt() {
        let settings = AbuseSettings {
            connections_per_ip: 2,
            ..AbuseSettings::default()
        };
        let limits = Arc::new(ClientLimits::new(settings));
        let outside: IpAddr = "192.0.2.7".parse().unwrap();
        let a = limits.admit(outside).unwrap();
        let b = limits.admit(outside).unwrap();
        assert!(a.is_some() && b.is_some());
        assert_eq!(limits.admit(outside).unwrap_err(), Admission::TooMany);
        drop(a);
        assert!(limits.admit(outside).is_ok());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(limits.admit(local).unwrap().is_none());
        }
        limits.login_failed(outside);
        limits.login_failed(outside);
        assert_eq!(limits.login_penalty(outside), Duration::from_secs(1));
        limits.login_succeeded(outside);
        assert_eq!(limits.login_penalty(outside), Duration::ZERO);
        limits.login_failed(local);
        assert_eq!(limits.login_penalty(local), Duration::ZERO);
    }
}
