//! Fixed-bucket histograms. An observation is one search over a dozen or so bounds
//! and two additions into arrays that exist from the start: nothing is allocated,
//! nothing locked. `Histogram` is for the event loop; `SharedHistogram` is the same
//! with atomics, for the storage threads and the Redis link to fill while `/metrics`
//! reads it from the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds plus the +Inf bucket never exceed this.
pub const MAX_BUCKETS: usize = 20;

/// The upper bounds of a histogram's buckets (inclusive, as Prometheus's `le`),
/// in the unit observations are made in, and how to print them.
#[derive(Debug)]
pub struct Buckets {
    pub bounds: &'static [u64],
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Observed in nanoseconds, exported in seconds (Prometheus base unit).
    Seconds,
    /// A plain count (a batch size), exported as is.
    Count,
}

/// Latencies from 50 us (a request answered from memory) to 30 s (a request that
/// waited for storage until its deadline). A fan-out to 1,000 loopback sockets
/// takes 2-8 ms here, to 19,000 about 150 ms (README "Performance"); a group
/// commit is one fsync, milliseconds on an SSD, tens on an SD card.
pub static LATENCY: Buckets = Buckets {
    bounds: &[
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
        30_000_000_000,
    ],
    unit: Unit::Seconds,
};

/// Writes in one group commit: powers of two up to the writer's largest batch (4,096).
pub static BATCH: Buckets =
    Buckets { bounds: &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096], unit: Unit::Count };

/// The bucket `value` falls in: the first bound it does not exceed, or +Inf
/// (index `bounds.len()`).
fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|&b| b < value)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Observations counted per bucket (not cumulative: `render` adds them up).
#[derive(Debug, Clone)]
pub struct Histogram {
    pub buckets: &'static Buckets,
    counts: [u64; MAX_BUCKETS],
    sum: u64,
}

impl Histogram {
    pub const fn new(buckets: &'static Buckets) -> Self {
        assert!(buckets.bounds.len() < MAX_BUCKETS);
        Histogram { buckets, counts: [0; MAX_BUCKETS], sum: 0 }
    }

    pub fn observe(&mut self, value: u64) {
        self.counts[bucket(self.buckets.bounds, value)] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    pub fn observe_duration(&mut self, d: Duration) {
        self.observe(nanos(d));
    }

    /// Observations so far (the +Inf bucket's cumulative count).
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations, in the unit they were made in.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// `(upper bound, cumulative count)` per bucket, `None` for +Inf, as the text
    /// format wants them.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = self.buckets.bounds.iter().map(|&b| Some(b)).chain([None]);
        bounds.zip(self.counts.iter().scan(0u64, |acc, &c| {
            *acc += c;
            Some(*acc)
        }))
    }
}

/// A histogram other threads observe into while the loop reads it.
#[derive(Debug)]
pub struct SharedHistogram {
    buckets: &'static Buckets,
    counts: [AtomicU64; MAX_BUCKETS],
    sum: AtomicU64,
}

impl SharedHistogram {
    pub const fn new(buckets: &'static Buckets) -> Self {
        assert!(buckets.bounds.len() < MAX_BUCKETS);
        SharedHistogram { buckets, counts: [const { AtomicU64::new(0) }; MAX_BUCKETS], sum: AtomicU64::new(0) }
    }

    // Relaxed: each counter is read on its own; a scrape that lands between the
    // bucket and the sum is off by one observation, which the next scrape fixes.
    pub fn observe(&self, value: u64) {
        self.counts[bucket(self.buckets.bounds, value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(nanos(d));
    }

    /// A copy to render. The count is the buckets' total, so it always agrees with
    /// the +Inf bucket.
    pub fn snapshot(&self) -> Histogram {
        let mut h = Histogram::new(self.buckets);
        for (to, from) in h.counts.iter_mut().zip(&self.counts) {
            *to = from.load(Ordering::Relaxed);
        }
        h.sum = self.sum.load(Ordering::Relaxed);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static EDGES: Buckets = Buckets { bounds: &[10, 20, 40], unit: Unit::Count };

    fn cumulative(h: &Histogram) -> Vec<(Option<u64>, u64)> {
        h.cumulative().collect()
    }

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket_and_above_the_last_in_inf() {
        let mut h = Histogram::new(&EDGES);
        for v in [0, 10, 11, 20, 40, 41, u64::MAX] {
            h.observe(v);
        }
        // le=10: 0 and 10; le=20: + 11, 20; le=40: + 40; +Inf: + 41, MAX.
        assert_eq!(cumulative(&h), [(Some(10), 2), (Some(20), 4), (Some(40), 5), (None, 7)]);
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum(), u64::MAX, "the sum saturates instead of wrapping");
    }

    #[test]
    fn sum_and_count_follow_the_observations() {
        let mut h = Histogram::new(&LATENCY);
        assert_eq!((h.count(), h.sum()), (0, 0));
        assert!(cumulative(&h).iter().all(|&(_, n)| n == 0));
        h.observe_duration(Duration::from_micros(50));
        h.observe_duration(Duration::from_millis(3));
        h.observe_duration(Duration::from_secs(60));
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum(), 60_003_050_000);
        let c = cumulative(&h);
        assert_eq!(c.len(), LATENCY.bounds.len() + 1);
        assert_eq!(c[0], (Some(50_000), 1), "50 us is on the first bound");
        assert_eq!(c.iter().find(|(b, _)| *b == Some(5_000_000)).unwrap().1, 2);
        assert_eq!(c.iter().find(|(b, _)| *b == Some(30_000_000_000)).unwrap().1, 2);
        assert_eq!(*c.last().unwrap(), (None, 3), "a minute is past every bound");
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative counts never fall");
    }

    #[test]
    fn the_shared_histogram_counts_the_same_from_several_threads() {
        static H: SharedHistogram = SharedHistogram::new(&BATCH);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (1..=1000).for_each(|v| H.observe(v)));
            }
        });
        let snap = H.snapshot();
        assert_eq!(snap.count(), 4000);
        assert_eq!(snap.sum(), 4 * 500_500);
        let c: Vec<_> = snap.cumulative().collect();
        assert_eq!(c[0], (Some(1), 4));
        assert_eq!(c.iter().find(|(b, _)| *b == Some(1024)).unwrap().1, 4000);
        let mut plain = Histogram::new(&BATCH);
        (1..=1000).for_each(|v| plain.observe(v));
        assert_eq!(
            plain.cumulative().map(|(_, n)| 4 * n).collect::<Vec<_>>(),
            c.iter().map(|&(_, n)| n).collect::<Vec<_>>()
        );
    }
}
