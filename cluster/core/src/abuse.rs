//! The abuse policy, sans-IO: how many connections one client address may hold and open per
//! second, and how long a login waits after failures (per address and per account, growing
//! like Dovecot's auth penalty). Time comes in as milliseconds; nothing here sleeps or locks.

use std::net::IpAddr;
use std::time::Duration;

/// Limits per client address.
#[derive(Clone, Debug, PartialEq)]
pub struct AbuseSettings {
    /// Connections one address may hold open.
    pub connections_per_ip: u32,
    /// New connections per second one address may open, on average…
    pub connection_rate_per_ip: f64,
    /// …and at once, after being quiet.
    pub connection_burst_per_ip: f64,
    /// Addresses no limit applies to (loopback by default: local MTAs and tools).
    pub exempt: Vec<Cidr>,
}

impl Default for AbuseSettings {
    fn default() -> Self {
        Self {
            connections_per_ip: 50,
            connection_rate_per_ip: 20.0,
            connection_burst_per_ip: 40.0,
            exempt: vec![
                Cidr::parse("127.0.0.0/8").unwrap_or(Cidr::NONE),
                Cidr::parse("::1/128").unwrap_or(Cidr::NONE),
            ],
        }
    }
}

/// An address range, `ADDR/BITS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl Cidr {
    /// A range that holds no address.
    const NONE: Cidr = Cidr {
        network: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        bits: 255,
    };

    /// `10.0.0.0/8`, `::1/128`, or a bare address (all its bits).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr.parse::<IpAddr>().ok()?, bits.parse::<u8>().ok()?),
            None => {
                let addr = text.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr {
            network: addr,
            bits,
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let prefix = |bytes: &[u8], bits: u8| -> Vec<u8> {
            bytes
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let keep = (i32::from(bits) - 8 * i as i32).clamp(0, 8);
                    b & (0xffu16 << (8 - keep)) as u8
                })
                .collect()
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) if self.bits <= 32 => {
                prefix(&net.octets(), self.bits) == prefix(&a.octets(), self.bits)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) if self.bits <= 128 => {
                prefix(&net.octets(), self.bits) == prefix(&a.octets(), self.bits)
            }
            _ => false,
        }
    }
}

/// Whether a new connection may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The address holds its share of connections already.
    TooMany,
    /// The address opens connections faster than its rate.
    TooFast,
}

/// Failures after which the delay stops growing (2^5 × 500 ms = 16 s, capped below).
const PENALTY_STEPS_MAX: u32 = 5;
const PENALTY_BASE_MS: u64 = 500;
const PENALTY_MAX_MS: u64 = 15_000;
/// Failures are forgotten after this long without one.
pub const FAILURES_FORGOTTEN_AFTER_MS: u64 = 15 * 60 * 1000;

/// The delay before answering a login after `failures` recent failures: none for the first
/// try, then 0.5 s, 1 s, 2 s … up to 15 s, so a guesser gets a few tries a minute.
pub fn penalty(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let step = (failures - 1).min(PENALTY_STEPS_MAX);
    Duration::from_millis((PENALTY_BASE_MS << step).min(PENALTY_MAX_MS))
}

/// Recent login failures of one address or account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    count: u32,
    last_ms: u64,
}

impl Failures {
    /// The failures that still count at `now_ms`.
    pub fn count(&self, now_ms: u64) -> u32 {
        if now_ms.saturating_sub(self.last_ms) > FAILURES_FORGOTTEN_AFTER_MS {
            0
        } else {
            self.count
        }
    }

    pub fn failed(&mut self, now_ms: u64) {
        self.count = self.count(now_ms).saturating_add(1);
        self.last_ms = now_ms;
    }

    pub fn succeeded(&mut self) {
        self.count = 0;
    }

    /// Whether nothing is left to remember.
    pub fn forgotten(&self, now_ms: u64) -> bool {
        self.count(now_ms) == 0
    }
}

/// What is kept per client address.
#[derive(Clone, Debug, PartialEq)]
pub struct IpRecord {
    open: u32,
    tokens: f64,
    refilled_ms: u64,
    pub failures: Failures,
}

impl IpRecord {
    pub fn new(settings: &AbuseSettings, now_ms: u64) -> Self {
        Self {
            open: 0,
            tokens: settings.connection_burst_per_ip,
            refilled_ms: now_ms,
            failures: Failures::default(),
        }
    }

    /// A new connection from this address at `now_ms`; counted open when admitted.
    pub fn admit(&mut self, settings: &AbuseSettings, now_ms: u64) -> Admission {
        let elapsed_s = now_ms.saturating_sub(self.refilled_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed_s * settings.connection_rate_per_ip)
            .min(settings.connection_burst_per_ip);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        if self.open >= settings.connections_per_ip {
            return Admission::TooMany;
        }
        if self.tokens < 1.0 {
            return Admission::TooFast;
        }
        self.tokens -= 1.0;
        self.open += 1;
        Admission::Admitted
    }

    /// An admitted connection ended.
    pub fn leave(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    /// Whether the record holds nothing worth keeping (no connection, no recent failure,
    /// its burst refilled).
    pub fn idle(&self, settings: &AbuseSettings, now_ms: u64) -> bool {
        let refill_ms = (settings.connection_burst_per_ip
            / settings.connection_rate_per_ip.max(0.001)
            * 1000.0) as u64;
        self.open == 0
            && self.failures.forgotten(now_ms)
            && now_ms.saturating_sub(self.refilled_ms) >= refill_ms
    }
}

/// Whether `addr` is free of limits.
pub fn exempt(settings: &AbuseSettings, addr: IpAddr) -> bool {
    settings.exempt.iter().any(|range| range.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_what_they_should() {
        let loopback = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(loopback.contains("127.1.2.3".parse().unwrap()));
        assert!(!loopback.contains("128.0.0.1".parse().unwrap()));
        assert!(!loopback.contains("::1".parse().unwrap()));
        let net = Cidr::parse("10.1.0.0/17").unwrap();
        assert!(net.contains("10.1.127.255".parse().unwrap()));
        assert!(!net.contains("10.1.128.0".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nonsense"), None);
        assert!(!Cidr::NONE.contains("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn an_address_gets_its_share_of_connections_and_of_the_rate() {
        let settings = AbuseSettings {
            connections_per_ip: 3,
            connection_rate_per_ip: 2.0,
            connection_burst_per_ip: 4.0,
            exempt: Vec::new(),
        };
        let mut record = IpRecord::new(&settings, 0);
        for _ in 0..3 {
            assert_eq!(record.admit(&settings, 0), Admission::Admitted);
        }
        assert_eq!(record.admit(&settings, 0), Admission::TooMany);
        record.leave();
        assert_eq!(record.admit(&settings, 0), Admission::Admitted);
        record.leave();
        record.leave();
        // The burst of 4 is spent; the next token comes 500 ms later.
        assert_eq!(record.admit(&settings, 100), Admission::TooFast);
        assert_eq!(record.admit(&settings, 600), Admission::Admitted);
        assert!(!record.idle(&settings, 600));
    }

    #[test]
    fn failed_logins_wait_longer_each_time_and_are_forgotten() {
        assert_eq!(penalty(0), Duration::ZERO);
        assert_eq!(penalty(1), Duration::from_millis(500));
        assert_eq!(penalty(2), Duration::from_secs(1));
        assert_eq!(penalty(5), Duration::from_secs(8));
        assert_eq!(penalty(100), Duration::from_secs(15));
        let mut failures = Failures::default();
        failures.failed(1_000);
        failures.failed(2_000);
        assert_eq!(failures.count(2_000), 2);
        assert_eq!(failures.count(2_000 + FAILURES_FORGOTTEN_AFTER_MS + 1), 0);
        failures.succeeded();
        assert!(failures.forgotten(3_000));
    }
}
