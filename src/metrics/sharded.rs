//! Counters and histograms written from every worker thread without
//! contention: each thread counts into its own cache-line-sized shard, and a
//! scrape adds the shards up. Per-request metrics use these; a single shared
//! atomic (or a histogram behind a lock) would bounce its cache line between
//! cores on every request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Shards per metric. Threads beyond this share shards (still correct,
/// just contended again).
const SHARDS: usize = 8;

/// The shard this thread writes to, handed out round robin on first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Keeps what it holds on cache lines of its own (two lines: adjacent-line
/// prefetching would otherwise pair neighbours).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A monotonic counter.
#[derive(Debug, Clone, Default)]
pub struct ShardedCounter(Arc<[Padded<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One thread's observations.
#[derive(Debug)]
struct HistogramShard {
    count: AtomicU64,
    /// An `f64`, as bits.
    sum: AtomicU64,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: Box<[AtomicU64]>,
}

/// A histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    bounds: Arc<[f64]>,
    shards: Arc<[Padded<HistogramShard>]>,
}

impl ShardedHistogram {
    /// A histogram with these upper bounds (ascending); `+Inf` is added.
    pub fn new(bounds: &[f64]) -> ShardedHistogram {
        let bounds: Arc<[f64]> = bounds.iter().copied().chain([f64::MAX]).collect();
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(HistogramShard {
                    count: AtomicU64::new(0),
                    sum: AtomicU64::new(0f64.to_bits()),
                    buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
                })
            })
            .collect();
        ShardedHistogram { bounds, shards }
    }

    pub fn observe(&self, v: f64) {
        let shard = &self.shards[shard()].0;
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len() - 1);
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Only this thread (or the few sharing its shard) writes here, so
        // the loop almost never retries.
        let _ = shard
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        shard.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Sum, count and per-bucket counts (upper bound, observations), over
    /// all shards.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut sum = 0.0;
        let mut count = 0;
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().map(|b| (*b, 0)).collect();
        for shard in self.shards.iter() {
            sum += f64::from_bits(shard.0.sum.load(Ordering::Relaxed));
            count += shard.0.count.load(Ordering::Relaxed);
            for (total, n) in buckets.iter_mut().zip(shard.0.buckets.iter()) {
                total.1 += n.load(Ordering::Relaxed);
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = ShardedCounter::default();
        let histogram = ShardedHistogram::new(&[0.5, 1.0]);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for i in 0..1000 {
                        counter.inc();
                        histogram.observe(if i % 2 == 0 { 0.25 } else { 2.0 });
                    }
                });
            }
        });
        assert_eq!(counter.get(), 12_000);
        let (sum, count, buckets) = histogram.get();
        assert_eq!(count, 12_000);
        assert!((sum - 6000.0 * 2.25).abs() < 1e-6, "{sum}");
        assert_eq!(buckets, vec![(0.5, 6000), (1.0, 0), (f64::MAX, 6000)]);
    }
}
