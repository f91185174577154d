//! Two samples of one metric put side by side: where one value falls in a distribution, and how
//! far apart two distributions are (the two-sample Kolmogorov–Smirnov test).
//!
//! `compare` uses these to say whether reality looks like a draw from the simulator: the real
//! median's percentile among hundreds of simulated seeds, whether it lies inside the simulated
//! 5–95% band, and the KS distance with its p-value (small p: the two are unlikely to be one
//! distribution). With a handful of real runs the p-value is coarse; it is printed as such.

use serde::{Deserialize, Serialize};

/// Finite values, sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample(Vec<f64>);

impl Sample {
    /// The finite values of `values`; `None` if there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Sample> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then_some(Sample(v))
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a sample has at least one value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0..=1), nearest rank, as the lab's other tables use.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.0.len();
        self.0[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
    }

    /// The median.
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// Where `x` falls, in percent: values below it, plus half of those equal to it.
    pub fn percentile_of(&self, x: f64) -> f64 {
        let below = self.0.partition_point(|&v| v < x);
        let up_to = self.0.partition_point(|&v| v <= x);
        100.0 * (below as f64 + (up_to - below) as f64 / 2.0) / self.0.len() as f64
    }

    /// The fraction of values at or below `x`.
    fn cdf(&self, x: f64) -> f64 {
        self.0.partition_point(|&v| v <= x) as f64 / self.0.len() as f64
    }
}

/// The two-sample Kolmogorov–Smirnov statistic and its asymptotic p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ks {
    /// The largest gap between the two empirical distribution functions, 0..=1.
    pub d: f64,
    /// The chance of a gap at least this large if both came from one distribution.
    pub p_value: f64,
}

/// Compares two samples.
pub fn ks_two_sample(a: &Sample, b: &Sample) -> Ks {
    let d =
        a.0.iter()
            .chain(&b.0)
            .map(|&x| (a.cdf(x) - b.cdf(x)).abs())
            .fold(0.0, f64::max);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let effective = (n * m / (n + m)).sqrt();
    // The small-sample correction of Stephens (1970), as in Numerical Recipes.
    let lambda = (effective + 0.12 + 0.11 / effective) * d;
    Ks {
        d,
        p_value: kolmogorov_q(lambda),
    }
}

/// The Kolmogorov distribution's tail, Q(λ) = 2 Σ (-1)^(k-1) exp(-2 k² λ²).
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += if k as u32 % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_counts_ties_as_half() {
        let s = Sample::of((1..=100).map(f64::from)).unwrap();
        assert_eq!(s.percentile_of(50.0), 49.5);
        assert_eq!(s.percentile_of(0.0), 0.0);
        assert_eq!(s.percentile_of(1000.0), 100.0);
        assert_eq!(
            (s.quantile(0.05), s.median(), s.quantile(0.95)),
            (5.0, 50.0, 95.0)
        );
    }

    #[test]
    fn ks_tells_one_distribution_from_a_shifted_one() {
        let a = Sample::of((0..200).map(|i| f64::from(i % 100))).unwrap();
        let same = Sample::of((0..50).map(|i| f64::from(i * 2))).unwrap();
        let shifted = Sample::of((0..50).map(|i| f64::from(i * 2 + 60))).unwrap();
        let near = ks_two_sample(&a, &same);
        let far = ks_two_sample(&a, &shifted);
        assert!(near.d < 0.05 && near.p_value > 0.9, "{near:?}");
        assert!((far.d - 0.6).abs() < 0.02 && far.p_value < 1e-6, "{far:?}");
    }

    #[test]
    fn kolmogorov_tail_matches_known_values() {
        // Q(1.36) is the textbook 5% critical value; Q(1.63) the 1% one.
        assert!((kolmogorov_q(1.36) - 0.05).abs() < 0.002);
        assert!((kolmogorov_q(1.63) - 0.01).abs() < 0.001);
    }
}
