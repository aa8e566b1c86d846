//! Hash maps keyed by `u64`, split into shards so that growing never moves more than a small part of the entries.
//!
//! A single table of a million entries rehashes all of them at once when it outgrows its capacity: a quarter of a
//! second during which the decision that caused it, and every decision queued behind it, waits. Split in 1024 shards
//! that fill evenly, each growth moves about a thousandth of the entries (well under a millisecond).

use rustc_hash::FxHashMap;

const SHARD_BITS: u32 = 10;

/// A map from `u64` keys, in shards.
pub(crate) struct Sharded<V> {
    shards: Box<[FxHashMap<u64, V>]>,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Sharded { shards: (0..1 << SHARD_BITS).map(|_| FxHashMap::default()).collect() }
    }
}

/// The shard of a key: the top bits of a multiplicative hash, a different function from the maps' own hash, so
/// that the keys of one shard still spread over its table.
fn shard(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARD_BITS)) as usize
}

impl<V> Sharded<V> {
    /// The value of `key`.
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        self.shards[shard(key)].get(&key)
    }

    /// The value of `key`, inserted as the default when absent.
    pub(crate) fn get_or_default(&mut self, key: u64) -> &mut V
    where
        V: Default,
    {
        self.shards[shard(key)].entry(key).or_default()
    }

    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Keeps the entries for which `keep` answers true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&u64, &mut V) -> bool) {
        for s in self.shards.iter_mut() {
            s.retain(&mut keep);
        }
    }

    /// Every value, to change in place, in no particular order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.shards.iter_mut().flat_map(|s| s.values_mut())
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

impl<V> FromIterator<(u64, V)> for Sharded<V> {
    fn from_iter<I: IntoIterator<Item = (u64, V)>>(items: I) -> Self {
        let mut map = Sharded::default();
        for (k, v) in items {
            map.shards[shard(k)].insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_behaves_as_one_map_and_keys_spread_over_the_shards() {
        let mut m: Sharded<u32> = Sharded::default();
        for k in 0..10_000u64 {
            *m.get_or_default(k * 3) += 1;
        }
        *m.get_or_default(0) += 1;
        assert_eq!(m.len(), 10_000);
        assert_eq!((m.get(0), m.get(3), m.get(4)), (Some(&2), Some(&1), None));
        m.retain(|k, _| k % 2 == 0);
        assert_eq!(m.len(), 5_000);
        let again: Sharded<u32> = m.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(again.len(), 5_000);
        let busiest = m.shards.iter().map(|s| s.len()).max().unwrap_or(0);
        assert!(busiest < 20, "{busiest}");
    }
}
