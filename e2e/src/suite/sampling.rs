//! How many requests a traffic-share check needs, and what it may accept.
//!
//! A weighted split or an injected fault is a Bernoulli trial per request:
//! of `n` requests, the count `k` that lands on v2 (or is aborted) is
//! binomial with mean `n·p` and standard deviation `σ = √(n·p·(1−p))`. A
//! check accepts `k` within `n·p ± 3σ`; a correct proxy fails it with
//! probability about 0.27 % (two-sided 3σ of the normal approximation: about
//! one run in 370). The sample is sized so that a given wrong share lands
//! outside the band by 3σ of its own distribution (then it passes the check
//! with probability below 0.14 %): [`Share::samples_to_tell_apart`].

use anyhow::ensure;

/// The probability a correct proxy fails a [`Share::check`] (two-sided 3σ).
pub const FALSE_FAILURE_RATE: f64 = 0.0027;

/// How many standard deviations a count may stray.
const Z: f64 = 3.0;

/// An expected share of requests, `p` in (0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub p: f64,
}

impl Share {
    /// A share in percent (`Share::percent(10.0)` is 10 %).
    pub fn percent(percent: f64) -> Self {
        Share { p: percent / 100.0 }
    }

    fn sigma(self, n: usize) -> f64 {
        (n as f64 * self.p * (1.0 - self.p)).sqrt()
    }

    /// The counts out of `n` a correct proxy is expected to produce: `n·p ± 3σ`, inclusive.
    pub fn band(self, n: usize) -> (usize, usize) {
        let mean = n as f64 * self.p;
        let spread = Z * self.sigma(n);
        (
            (mean - spread).max(0.0).ceil() as usize,
            (mean + spread).min(n as f64).floor() as usize,
        )
    }

    /// The smallest sample in which a proxy producing `other` instead of this
    /// share lands outside [`Share::band`] by 3σ of its own distribution, so it
    /// fails the check with probability above 99.8 %.
    pub fn samples_to_tell_apart(self, other: Share) -> usize {
        // |p − q|·n ≥ 3·(σ_p + σ_q)·√n  ⇔  n ≥ (3·(√(p(1−p)) + √(q(1−q))) / |p − q|)².
        let spread = |p: f64| (p * (1.0 - p)).sqrt();
        let root = Z * (spread(self.p) + spread(other.p)) / (self.p - other.p).abs();
        (root * root).ceil() as usize
    }

    /// Checks that `k` of `n` requests is within the band; the error says
    /// what was seen and what a correct proxy produces.
    pub fn check(self, what: &str, k: usize, n: usize) -> anyhow::Result<()> {
        let (low, high) = self.band(n);
        ensure!(
            (low..=high).contains(&k),
            "{what}: {k} of {n} ({:.1} %), expected {:.1} % ± 3σ = {low}..={high}",
            100.0 * k as f64 / n as f64,
            100.0 * self.p
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_band_is_three_sigma_around_the_mean() {
        // 2000 requests at 10 %: mean 200, σ = √180 = 13.4.
        assert_eq!(Share::percent(10.0).band(2000), (160, 240));
        // 1000 requests at 30 %: mean 300, σ = √210 = 14.5.
        assert_eq!(Share::percent(30.0).band(1000), (257, 343));
        assert!(Share::percent(10.0).check("v2", 200, 2000).is_ok());
        let e = Share::percent(10.0).check("v2", 300, 2000).unwrap_err().to_string();
        assert!(e.contains("300 of 2000") && e.contains("160..=240"), "{e}");
    }

    #[test]
    fn the_sample_sizes_tell_the_wrong_shares_apart() {
        // The split: 90/10 against 85/15 needs 1555 requests; first light sends 2000.
        let split = Share::percent(10.0).samples_to_tell_apart(Share::percent(15.0));
        assert_eq!(split, 1555);
        // With 2000, an 85/15 split's 3σ low end (300 − 3·16 = 252) is above the band's top (240).
        let wrong = Share::percent(15.0);
        assert!(2000.0 * wrong.p - 3.0 * wrong.sigma(2000) > Share::percent(10.0).band(2000).1 as f64);
        // The abort: 30 % against 20 % or 40 % needs at most 810 requests; first light sends 1000.
        let abort = Share::percent(30.0);
        assert!(abort.samples_to_tell_apart(Share::percent(20.0)) <= 1000);
        assert!(abort.samples_to_tell_apart(Share::percent(40.0)) <= 1000);
    }
}
