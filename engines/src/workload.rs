//! The key/value streams both engines are given: what each operation is, which key it touches
//! and what value it writes. Everything here is pure and seeded, so the two engines see the same
//! operations in the same order, byte for byte.

use std::fmt;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// Input that does not parse: a scale, a mix or a key distribution.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// How many keys the store holds, e.g. `1m` (1,000,000), `100k`, `10m`, `100m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    pub keys: u64,
}

impl Scale {
    /// Parses `1m`, `250k`, `1000000`; at least 1,000 keys.
    pub fn parse(text: &str) -> Result<Scale, ParseError> {
        let t = text.trim().to_ascii_lowercase();
        let (digits, factor) = match t.strip_suffix('m') {
            Some(d) => (d, 1_000_000),
            None => match t.strip_suffix('k') {
                Some(d) => (d, 1_000),
                None => (t.as_str(), 1),
            },
        };
        let keys = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .ok_or_else(|| {
                ParseError(format!(
                    "scale {text:?} does not parse: give a key count such as 1m, 10m, 100m or 250k"
                ))
            })?;
        if keys < 1_000 {
            return Err(ParseError(format!(
                "scale {text:?} is {keys} keys; give at least 1k"
            )));
        }
        Ok(Scale { keys })
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.keys {
            k if k % 1_000_000 == 0 => write!(f, "{}M", k / 1_000_000),
            k if k % 1_000 == 0 => write!(f, "{}k", k / 1_000),
            k => write!(f, "{k}"),
        }
    }
}

/// The share of reads, writes and range scans in a workload, in percent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    pub name: String,
    pub read_pct: u32,
    pub write_pct: u32,
    pub scan_pct: u32,
}

impl Mix {
    fn new(name: &str, read_pct: u32, write_pct: u32, scan_pct: u32) -> Mix {
        Mix {
            name: name.to_string(),
            read_pct,
            write_pct,
            scan_pct,
        }
    }

    /// The four workloads of the experiment: write-heavy (90% writes), read-heavy (90% reads),
    /// mixed (50/50) and range-scan (95% scans of up to 100 keys, 5% writes; YCSB's E).
    pub fn standard() -> Vec<Mix> {
        vec![
            Mix::new("write-heavy", 10, 90, 0),
            Mix::new("read-heavy", 90, 10, 0),
            Mix::new("mixed", 50, 50, 0),
            Mix::new("range-scan", 0, 5, 95),
        ]
    }

    /// A standard name, or `READS/WRITES/SCANS` in percent summing to 100 (e.g. `70/20/10`).
    pub fn parse(text: &str) -> Result<Mix, ParseError> {
        let t = text.trim();
        if let Some(mix) = Mix::standard().into_iter().find(|m| m.name == t) {
            return Ok(mix);
        }
        let bad = || {
            ParseError(format!(
                "workload {text:?} does not parse: give write-heavy, read-heavy, mixed, range-scan, \
                 or READS/WRITES/SCANS percentages summing to 100, e.g. 70/20/10"
            ))
        };
        let parts: Vec<u32> = t
            .split('/')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        match parts[..] {
            [r, w, s] if r + w + s == 100 => Ok(Mix::new(t, r, w, s)),
            _ => Err(bad()),
        }
    }
}

/// Which keys the operations touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled Zipfian (theta 0.99): a few keys take most operations, spread over the
    /// key space rather than bunched at its start.
    Zipfian,
}

impl KeyDist {
    pub fn parse(text: &str) -> Result<KeyDist, ParseError> {
        match text.trim() {
            "uniform" => Ok(KeyDist::Uniform),
            "zipfian" => Ok(KeyDist::Zipfian),
            _ => Err(ParseError(format!(
                "key distribution {text:?} does not parse: give uniform or zipfian"
            ))),
        }
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipfian => "zipfian",
        })
    }
}

/// Gray et al.'s Zipfian generator, as YCSB uses it: ranks 0..n, rank 0 the most popular.
#[derive(Debug)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipf {
    /// YCSB's skew.
    pub const THETA: f64 = 0.99;

    /// The generator for `n` ranks; computing zeta(n) is O(n), so share one per scale.
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(n >= 2 && theta > 0.0 && theta < 1.0);
        let zeta = |count: u64| {
            (1..=count)
                .map(|i| 1.0 / (i as f64).powf(theta))
                .sum::<f64>()
        };
        let zeta_n = zeta(n);
        let zeta_2 = zeta(2);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
        Zipf {
            n,
            theta,
            alpha,
            zeta_n,
            eta,
        }
    }

    /// A rank drawn from `u` uniform in [0, 1).
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }

    /// The probability of rank 0, for tests.
    pub fn top_share(&self) -> f64 {
        1.0 / self.zeta_n
    }
}

/// FNV-1a over the rank's bytes: scatters Zipfian ranks over the key space (YCSB's scrambling).
fn scatter(rank: u64) -> u64 {
    rank.to_le_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// One operation on the store. Keys are 0..keys; a write's value is the stream's
/// [`OpStream::value`] at the time it is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get(u64),
    Put(u64),
    /// Read `len` keys in order starting at the key.
    Scan(u64, u32),
}

/// Longest range scan (YCSB's default maximum scan length).
pub const MAX_SCAN_LEN: u32 = 100;

/// A seeded stream of operations for one client thread.
pub struct OpStream {
    rng: SmallRng,
    mix: Mix,
    keys: u64,
    zipf: Option<Arc<Zipf>>,
    value: Vec<u8>,
}

impl OpStream {
    /// The stream for `mix` over `keys` keys; `zipf` set for Zipfian keys (shared per scale).
    pub fn new(
        seed: u64,
        mix: &Mix,
        keys: u64,
        zipf: Option<Arc<Zipf>>,
        value_bytes: usize,
    ) -> OpStream {
        OpStream {
            rng: SmallRng::seed_from_u64(seed),
            mix: mix.clone(),
            keys,
            zipf,
            value: vec![0; value_bytes],
        }
    }

    fn key(&mut self) -> u64 {
        match &self.zipf {
            None => self.rng.gen_range(0..self.keys),
            Some(z) => scatter(z.rank(self.rng.gen::<f64>())) % self.keys,
        }
    }

    /// The next operation; for a write, [`OpStream::value`] holds the bytes to write.
    pub fn next_op(&mut self) -> Op {
        let roll = self.rng.gen_range(0..100);
        let key = self.key();
        if roll < self.mix.read_pct {
            Op::Get(key)
        } else if roll < self.mix.read_pct + self.mix.write_pct {
            self.rng.fill_bytes(&mut self.value);
            Op::Put(key)
        } else {
            Op::Scan(key, self.rng.gen_range(1..=MAX_SCAN_LEN))
        }
    }

    /// The value of the last write drawn.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

/// The value the initial load writes for `key`: random bytes from a per-key seed, the same for
/// both engines (random, so neither engine's compression could flatter it).
pub fn load_value(seed: u64, key: u64, out: &mut [u8]) {
    SmallRng::seed_from_u64(seed ^ scatter(key)).fill_bytes(out);
}

/// The on-disk key: big-endian, so byte order is numeric order and scans match Postgres's.
pub fn key_bytes(key: u64) -> [u8; 8] {
    key.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_parse_with_suffixes_and_refuse_junk() {
        assert_eq!(Scale::parse("1m").unwrap().keys, 1_000_000);
        assert_eq!(Scale::parse("250K").unwrap().keys, 250_000);
        assert_eq!(Scale::parse("5000").unwrap().keys, 5_000);
        assert_eq!(Scale::parse("100m").unwrap().to_string(), "100M");
        for bad in ["", "m", "1.5m", "-1m", "10", "1g", "99999999999999999999m"] {
            assert!(Scale::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn mixes_parse_by_name_or_percentages_summing_to_100() {
        assert_eq!(Mix::parse("write-heavy").unwrap().write_pct, 90);
        let custom = Mix::parse("70/20/10").unwrap();
        assert_eq!(
            (custom.read_pct, custom.write_pct, custom.scan_pct),
            (70, 20, 10)
        );
        for bad in ["writeheavy", "70/20", "70/20/20", "a/b/c", ""] {
            assert!(Mix::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn streams_with_one_seed_are_identical_and_follow_the_mix() {
        let mix = Mix::parse("write-heavy").unwrap();
        let draw = |seed| {
            let mut s = OpStream::new(seed, &mix, 1000, None, 16);
            (0..10_000)
                .map(|_| {
                    let op = s.next_op();
                    (op, s.value().to_vec())
                })
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        let writes = a.iter().filter(|(op, _)| matches!(op, Op::Put(_))).count();
        assert!(
            (8_700..9_300).contains(&writes),
            "{writes} writes of 10,000"
        );
    }

    #[test]
    fn zipfian_rank_zero_takes_its_theoretical_share() {
        let z = Zipf::new(100_000, Zipf::THETA);
        let mut rng = SmallRng::seed_from_u64(1);
        let draws = 200_000;
        let top = (0..draws).filter(|_| z.rank(rng.gen()) == 0).count() as f64 / draws as f64;
        let expected = z.top_share();
        assert!(
            (top - expected).abs() < 0.1 * expected,
            "{top} vs {expected}"
        );
        // Skewed: far more than a uniform draw's 1/100,000, and ranks stay in range.
        assert!(expected > 0.05);
        assert!((0..10_000).all(|_| z.rank(rng.gen()) < 100_000));
    }
}
