//! The synthetic workload: who gets mail (Zipf), how big it is, and what it says.
//!
//! Sizes (`SizeDistribution::Paper`): log-normal with median 2,000 bytes and σ = 1.3, clipped to
//! [256 B, 1 MiB]. Its mean is ≈ 4.7 KB, the paper's figure, with a heavy tail: about 1 message in
//! 800 exceeds 100 KB. Every message carries `X-Load-Id` (unique per run) and `X-Load-Sum` (CRC-32
//! of the body), so a reader can tell lost, duplicated and corrupt mail apart.

use rand::Rng;

/// Recipients drawn from `1..=users` with P(k) ∝ 1/k^s (s = 0 is uniform).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(users: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(users);
        let mut total = 0.0;
        for k in 1..=users.max(1) {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Self { cdf }
    }

    /// A user number in `1..=users`.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1) + 1
    }
}

#[derive(Debug, Clone, Copy)]
pub enum SizeDistribution {
    Fixed(usize),
    /// Log-normal, median 2,000 B, σ 1.3, clipped to [256 B, 1 MiB]: mean ≈ 4.7 KB.
    Paper,
}

const PAPER_MEDIAN_BYTES: f64 = 2000.0;
const PAPER_SIGMA: f64 = 1.3;
pub const SIZE_MIN_BYTES: usize = 256;
pub const SIZE_MAX_BYTES: usize = 1 << 20;

impl SizeDistribution {
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        match *self {
            SizeDistribution::Fixed(bytes) => bytes,
            SizeDistribution::Paper => {
                // Box–Muller for a standard normal.
                let (u1, u2): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let bytes = (PAPER_MEDIAN_BYTES.ln() + PAPER_SIGMA * z).exp();
                (bytes as usize).clamp(SIZE_MIN_BYTES, SIZE_MAX_BYTES)
            }
        }
    }
}

/// Random text in 76-column lines from which message bodies are cut (generating fresh random
/// bytes for every message would make the load generator, not the server, the bottleneck).
#[derive(Debug)]
pub struct BodySource {
    text: Vec<u8>,
    lines: usize,
}

const LINE_BYTES: usize = 78;

impl BodySource {
    /// Enough text for the largest message, twice over.
    pub fn new(rng: &mut impl Rng) -> Self {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let lines = 2 * SIZE_MAX_BYTES / LINE_BYTES + 1;
        let mut text = Vec::with_capacity(lines * LINE_BYTES);
        for _ in 0..lines {
            let mut word: u64 = 0;
            for i in 0..76 {
                if i % 10 == 0 {
                    word = rng.gen();
                }
                text.push(ALPHABET[(word & 63) as usize]);
                word >>= 6;
            }
            text.extend_from_slice(b"\r\n");
        }
        Self { text, lines }
    }

    /// Whole lines, about `size` bytes, starting at a random line.
    fn body(&self, size: usize, rng: &mut impl Rng) -> &[u8] {
        let count = (size / LINE_BYTES).clamp(1, self.lines / 2);
        let first = rng.gen_range(0..self.lines - count);
        &self.text[first * LINE_BYTES..(first + count) * LINE_BYTES]
    }
}

/// Builds a message of about `size` bytes: headers naming it, then a body of 76-column lines
/// (so every client's line limits hold) whose CRC-32 is in `X-Load-Sum`.
pub fn message(id: &str, size: usize, source: &BodySource, rng: &mut impl Rng, out: &mut Vec<u8>) {
    out.clear();
    let body = source.body(size, rng);
    let sum = crc32fast::hash(body);
    out.extend_from_slice(
        format!("X-Load-Id: {id}\r\nX-Load-Sum: {sum:08x}\r\nSubject: load {id}\r\n\r\n")
            .as_bytes(),
    );
    out.extend_from_slice(body);
}

/// What a fetched message says about itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// A load message whose body matches its checksum.
    Intact(String),
    /// A load message whose body does not match.
    Corrupt(String),
    /// Not a load message (other mail in the mailbox).
    Foreign,
}

/// Checks a message as retrieved (headers, possibly a Received: header added by the server).
pub fn check(message: &[u8]) -> Checked {
    let Some(split) = message.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Checked::Foreign;
    };
    let (head, body) = (&message[..split], &message[split + 4..]);
    let head = String::from_utf8_lossy(head);
    let field = |name: &str| {
        head.split("\r\n")
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let (Some(id), Some(sum)) = (field("X-Load-Id:"), field("X-Load-Sum:")) else {
        return Checked::Foreign;
    };
    if format!("{:08x}", crc32fast::hash(body)) == sum {
        Checked::Intact(id)
    } else {
        Checked::Corrupt(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn paper_sizes_have_the_papers_mean_and_a_heavy_tail() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 400_000;
        let sizes: Vec<usize> = (0..n)
            .map(|_| SizeDistribution::Paper.sample(&mut rng))
            .collect();
        let mean = sizes.iter().sum::<usize>() as f64 / n as f64;
        assert!((4200.0..5200.0).contains(&mean), "mean {mean}");
        let over_100k = sizes.iter().filter(|&&s| s > 100_000).count();
        assert!(over_100k > 100, "tail too light: {over_100k}");
        assert!(sizes
            .iter()
            .all(|&s| (SIZE_MIN_BYTES..=SIZE_MAX_BYTES).contains(&s)));
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let zipf = Zipf::new(1000, 1.0);
        let mut counts = vec![0usize; 1001];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        assert!(counts[1] > counts[10] * 5 && counts[10] > counts[500]);
        assert_eq!(counts[0], 0);
    }

    #[test]
    fn messages_check_out_and_damage_is_caught() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut m = Vec::new();
        let source = BodySource::new(&mut rng);
        message("r-1-2", 4700, &source, &mut rng, &mut m);
        assert!((4500..4900).contains(&m.len()));
        let mut received = b"Received: from x\r\n\tby y; date\r\n".to_vec();
        received.extend_from_slice(&m);
        assert_eq!(check(&received), Checked::Intact("r-1-2".into()));
        let last = received.len() - 5;
        received[last] ^= 1;
        assert_eq!(check(&received), Checked::Corrupt("r-1-2".into()));
    }
}
