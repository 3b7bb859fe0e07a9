//! Load balancing algorithms over a cluster's endpoints: weighted round robin,
//! least request (power of two choices), weighted random, ring hash (Ketama)
//! and Maglev. Pure: endpoint health, load and randomness are passed in, so
//! every policy is unit-tested deterministically.
//!
//! Consistent hashing uses a fixed hash function (FNV-1a with a murmur3
//! finalizer), so every proxy in the mesh maps a key to the same endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use trellis_contract::LbPolicy;

/// A compiled balancer for one endpoint list.
#[derive(Debug)]
pub enum Balancer {
    /// Weighted round robin over cumulative weights.
    RoundRobin {
        /// Cumulative weights.
        cum: Vec<u64>,
        /// Next position.
        next: AtomicU64,
    },
    /// Power of two choices on active requests divided by weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Sorted `(point, endpoint)` ring.
    RingHash(Vec<(u64, usize)>),
    /// Maglev lookup table.
    Maglev(Vec<usize>),
}

/// What a pick needs to know about the endpoints.
pub struct PickContext<'a> {
    /// Endpoint weights (length = number of endpoints).
    pub weights: &'a [u32],
    /// May this endpoint be picked (healthy, not ejected, not already tried)?
    pub eligible: &'a dyn Fn(usize) -> bool,
    /// Active requests on an endpoint.
    pub active: &'a dyn Fn(usize) -> u64,
    /// The request's hash key, for consistent hashing.
    pub hash: Option<u64>,
}

impl std::fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickContext")
            .field("weights", &self.weights)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// Build for endpoints with these weights and stable keys (`ip:port`).
    pub fn new(policy: &LbPolicy, weights: &[u32], keys: &[String]) -> Self {
        match policy {
            LbPolicy::RoundRobin => Self::RoundRobin {
                cum: cumulative(weights),
                // Start at a random offset so proxies started together spread load.
                next: AtomicU64::new(fastrand::u64(..)),
            },
            LbPolicy::LeastRequest => Self::LeastRequest,
            LbPolicy::Random => Self::Random,
            LbPolicy::RingHash { minimum_ring_size } => Self::RingHash(build_ring(weights, keys, *minimum_ring_size)),
            LbPolicy::Maglev { table_size } => Self::Maglev(build_maglev(weights, keys, *table_size as usize)),
        }
    }

    /// Pick an endpoint index, or `None` if no endpoint is eligible.
    pub fn pick(&self, ctx: &PickContext<'_>, rng: &mut fastrand::Rng) -> Option<usize> {
        let n = ctx.weights.len();
        if n == 0 {
            return None;
        }
        match self {
            Self::RoundRobin { cum, next } => {
                let total = *cum.last()?;
                // Bounded: at most one full cycle (capped), then fall back to random.
                for _ in 0..total.min(4096) {
                    let pos = next.fetch_add(1, Ordering::Relaxed) % total;
                    let idx = cum.partition_point(|c| *c <= pos);
                    if (ctx.eligible)(idx) {
                        return Some(idx);
                    }
                }
                weighted_random(ctx, rng)
            }
            Self::Random => weighted_random(ctx, rng),
            Self::LeastRequest => {
                let a = weighted_random(ctx, rng)?;
                let Some(b) = (0..4).filter_map(|_| weighted_random(ctx, rng)).find(|b| *b != a) else {
                    return Some(a);
                };
                // Compare active/weight without division: a_act * w_b vs b_act * w_a.
                let wa = u128::from(ctx.weights[a].max(1));
                let wb = u128::from(ctx.weights[b].max(1));
                let la = u128::from((ctx.active)(a)) * wb;
                let lb = u128::from((ctx.active)(b)) * wa;
                Some(if lb < la { b } else { a })
            }
            Self::RingHash(ring) => {
                let Some(h) = ctx.hash else {
                    return weighted_random(ctx, rng);
                };
                if ring.is_empty() {
                    return None;
                }
                let start = ring.partition_point(|(p, _)| *p < h);
                (0..ring.len())
                    .map(|i| ring[(start + i) % ring.len()].1)
                    .find(|idx| (ctx.eligible)(*idx))
            }
            Self::Maglev(table) => {
                let Some(h) = ctx.hash else {
                    return weighted_random(ctx, rng);
                };
                if table.is_empty() {
                    return None;
                }
                let start = (h % table.len() as u64) as usize;
                (0..table.len())
                    .map(|i| table[(start + i) % table.len()])
                    .find(|idx| (ctx.eligible)(*idx))
            }
        }
    }

    /// Does this policy use a hash key?
    pub fn uses_hash(&self) -> bool {
        matches!(self, Self::RingHash(_) | Self::Maglev(_))
    }
}

fn cumulative(weights: &[u32]) -> Vec<u64> {
    let mut acc = 0u64;
    weights
        .iter()
        .map(|w| {
            acc += u64::from((*w).max(1));
            acc
        })
        .collect()
}

fn weighted_random(ctx: &PickContext<'_>, rng: &mut fastrand::Rng) -> Option<usize> {
    let total: u64 = (0..ctx.weights.len())
        .filter(|i| (ctx.eligible)(*i))
        .map(|i| u64::from(ctx.weights[i].max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.u64(0..total);
    for i in 0..ctx.weights.len() {
        if !(ctx.eligible)(i) {
            continue;
        }
        let w = u64::from(ctx.weights[i].max(1));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

/// Stable 64-bit hash: FNV-1a over the bytes and the seed, then murmur3's fmix64.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn build_ring(weights: &[u32], keys: &[String], min_size: u32) -> Vec<(u64, usize)> {
    let total: u64 = weights.iter().map(|w| u64::from((*w).max(1))).sum();
    if total == 0 {
        return Vec::new();
    }
    // Envoy caps the ring at 8M entries; we cap lower to bound memory per cluster.
    let size = u64::from(min_size).clamp(1, 1 << 20);
    let mut ring = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let share = u64::from(weights[i].max(1));
        let replicas = (size * share).div_ceil(total).max(1);
        for r in 0..replicas {
            ring.push((hash64(format!("{key}_{r}").as_bytes(), 0), i));
        }
    }
    ring.sort_unstable();
    ring
}

fn build_maglev(weights: &[u32], keys: &[String], m: usize) -> Vec<usize> {
    let n = keys.len();
    if n == 0 || m == 0 {
        return Vec::new();
    }
    let max_w = u64::from(weights.iter().copied().max().unwrap_or(1).max(1));
    let offsets: Vec<usize> = keys
        .iter()
        .map(|k| (hash64(k.as_bytes(), 1) % m as u64) as usize)
        .collect();
    let skips: Vec<usize> = keys
        .iter()
        .map(|k| (hash64(k.as_bytes(), 2) % (m as u64 - 1).max(1)) as usize + 1)
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    let mut round: u64 = 0;
    // Each round endpoint i gets a turn when its weighted credit grows; the
    // loop ends after at most m * max_w / min_w rounds since every round with a
    // turn fills a slot (m is prime, so each permutation covers the table).
    while filled < m {
        round += 1;
        for i in 0..n {
            let w = u64::from(weights[i].max(1));
            if (round * w) / max_w == ((round - 1) * w) / max_w {
                continue;
            }
            loop {
                let c = (offsets[i] + next[i] * skips[i]) % m;
                next[i] += 1;
                if table[c] == usize::MAX {
                    table[c] = i;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn counts(b: &Balancer, weights: &[u32], eligible: &dyn Fn(usize) -> bool, picks: usize) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut c = vec![0; weights.len()];
        for i in 0..picks {
            let ctx = PickContext {
                weights,
                eligible,
                active: &|_| 0,
                hash: Some(hash64(&i.to_le_bytes(), 9)),
            };
            c[b.pick(&ctx, &mut rng).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_weighted_and_exact() {
        let w = [3, 1];
        let b = Balancer::new(&LbPolicy::RoundRobin, &w, &keys(2));
        assert_eq!(counts(&b, &w, &|_| true, 400), vec![300, 100]);
    }

    #[test]
    fn round_robin_skips_ineligible() {
        let w = [1, 1, 1];
        let b = Balancer::new(&LbPolicy::RoundRobin, &w, &keys(3));
        assert_eq!(counts(&b, &w, &|i| i != 1, 300), vec![150, 0, 150]);
    }

    #[test]
    fn random_is_weighted() {
        let w = [1, 9];
        let b = Balancer::new(&LbPolicy::Random, &w, &keys(2));
        let c = counts(&b, &w, &|_| true, 10_000);
        assert!((800..1200).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let w = [1, 1, 1];
        let b = Balancer::new(&LbPolicy::LeastRequest, &w, &keys(3));
        let mut rng = fastrand::Rng::with_seed(1);
        let active = |i: usize| if i == 2 { 0 } else { 100 };
        let mut hits = [0; 3];
        for _ in 0..3000 {
            let ctx = PickContext {
                weights: &w,
                eligible: &|_| true,
                active: &active,
                hash: None,
            };
            hits[b.pick(&ctx, &mut rng).unwrap()] += 1;
        }
        // P2C picks the idle endpoint whenever it is one of the two choices (5/9).
        assert!(hits[2] > 1500, "{hits:?}");
    }

    #[test]
    fn ring_hash_is_consistent_and_spreads() {
        let w = [1, 1, 1, 1];
        let b = Balancer::new(
            &LbPolicy::RingHash {
                minimum_ring_size: 1024,
            },
            &w,
            &keys(4),
        );
        let b2 = Balancer::new(
            &LbPolicy::RingHash {
                minimum_ring_size: 1024,
            },
            &w,
            &keys(4),
        );
        let mut rng = fastrand::Rng::with_seed(3);
        for k in 0..200u64 {
            let ctx = PickContext {
                weights: &w,
                eligible: &|_| true,
                active: &|_| 0,
                hash: Some(hash64(&k.to_le_bytes(), 0)),
            };
            assert_eq!(b.pick(&ctx, &mut rng), b2.pick(&ctx, &mut rng));
        }
        let c = counts(&b, &w, &|_| true, 4000);
        assert!(c.iter().all(|x| (600..1400).contains(x)), "{c:?}");
    }

    #[test]
    fn ring_hash_moves_only_keys_of_removed_endpoint() {
        let w = [1, 1, 1, 1];
        let b = Balancer::new(
            &LbPolicy::RingHash {
                minimum_ring_size: 1024,
            },
            &w,
            &keys(4),
        );
        let mut rng = fastrand::Rng::with_seed(3);
        for k in 0..500u64 {
            let hash = Some(hash64(&k.to_le_bytes(), 0));
            let all = PickContext {
                weights: &w,
                eligible: &|_| true,
                active: &|_| 0,
                hash,
            };
            let without3 = PickContext {
                weights: &w,
                eligible: &|i| i != 3,
                active: &|_| 0,
                hash,
            };
            let before = b.pick(&all, &mut rng).unwrap();
            let after = b.pick(&without3, &mut rng).unwrap();
            if before != 3 {
                assert_eq!(before, after, "key {k} moved");
            }
        }
    }

    #[test]
    fn maglev_table_is_full_balanced_and_consistent() {
        let w = [1, 1, 1];
        let b = Balancer::new(&LbPolicy::Maglev { table_size: 65537 }, &w, &keys(3));
        let Balancer::Maglev(table) = &b else { unreachable!() };
        assert_eq!(table.len(), 65537);
        let mut c = [0usize; 3];
        for e in table {
            c[*e] += 1;
        }
        assert!(c.iter().all(|x| (21_000..22_700).contains(x)), "{c:?}");
        let again = Balancer::new(&LbPolicy::Maglev { table_size: 65537 }, &w, &keys(3));
        let Balancer::Maglev(t2) = &again else { unreachable!() };
        assert_eq!(table, t2);
    }

    #[test]
    fn maglev_respects_weights() {
        let w = [1, 3];
        let b = Balancer::new(&LbPolicy::Maglev { table_size: 10007 }, &w, &keys(2));
        let Balancer::Maglev(table) = &b else { unreachable!() };
        let ones = table.iter().filter(|e| **e == 1).count();
        assert!((7000..8000).contains(&ones), "{ones}");
    }

    #[test]
    fn nothing_eligible_yields_none() {
        let w = [1, 1];
        for p in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::Random,
            LbPolicy::RingHash { minimum_ring_size: 64 },
            LbPolicy::Maglev { table_size: 251 },
        ] {
            let b = Balancer::new(&p, &w, &keys(2));
            let ctx = PickContext {
                weights: &w,
                eligible: &|_| false,
                active: &|_| 0,
                hash: Some(1),
            };
            assert_eq!(b.pick(&ctx, &mut fastrand::Rng::with_seed(1)), None, "{p:?}");
        }
    }
}
