//! Giving a map's memory back once it has emptied: a burst of connections grows the
//! embedded store's maps, and a `HashMap` never shrinks by itself.
//!
//! Hysteresis: a map shrinks only when under an eighth of its capacity is used, and
//! then to twice what it holds, so it needs to double again before it grows and to fall
//! to under a quarter of what it held before it shrinks again: churn at a steady size
//! never rehashes, and each rehash is paid for by at least as many removals as it moves
//! entries (amortised O(1) per removal).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Below this capacity a map is left as it is: what it holds is too small to matter.
pub const MIN_SHRINK_CAPACITY: usize = 1024;

/// Shrinks `map` to twice its length when it uses under an eighth of its capacity
/// (and that capacity is over [`MIN_SHRINK_CAPACITY`]); whether it did. Call after
/// removing. (`capacity` counts no slot a removal left as a tombstone, so it errs on the
/// side of keeping the table.)
pub fn shrink_if_sparse<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) -> bool {
    let capacity = map.capacity();
    let sparse = capacity > MIN_SHRINK_CAPACITY && map.len() < capacity / 8;
    if sparse {
        map.shrink_to(map.len() * 2);
    }
    sparse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_burst_shrinks_and_churn_does_not_rehash() {
        let mut map: HashMap<u32, u32> = HashMap::new();
        map.extend((0..100_000).map(|i| (i, i)));
        let full = map.capacity();
        // Removing half of it keeps the table: it may fill again.
        for i in 0..50_000 {
            map.remove(&i);
            assert!(!shrink_if_sparse(&mut map));
        }
        // Well below: it shrinks, to no less than twice what it holds.
        let mut shrinks = 0;
        for i in 50_000..95_000 {
            map.remove(&i);
            shrinks += usize::from(shrink_if_sparse(&mut map));
        }
        assert!(shrinks >= 1);
        let shrunk = map.capacity();
        assert!(shrunk <= full / 4, "{shrunk} of {full}");
        assert!(shrunk >= 2 * map.len(), "{shrunk} for {}", map.len());
        // Churn at the size it holds never shrinks the table again.
        for i in 0..20_000u32 {
            map.insert(200_000 + i, i);
            map.remove(&(95_000 + (i % 5_000)));
            assert!(!shrink_if_sparse(&mut map));
            map.remove(&(200_000 + i));
            assert!(!shrink_if_sparse(&mut map));
            map.insert(95_000 + (i % 5_000), i);
        }
        assert!(map.capacity() <= shrunk);
        // Emptied, it keeps next to nothing.
        map.clear();
        assert!(shrink_if_sparse(&mut map));
        assert!(map.capacity() <= MIN_SHRINK_CAPACITY);
    }

    #[test]
    fn small_maps_are_left_alone() {
        let mut map: HashMap<u32, u32> = (0..500).map(|i| (i, i)).collect();
        map.retain(|k, _| *k < 10);
        assert!(!shrink_if_sparse(&mut map));
        assert!(map.capacity() >= 500);
    }
}
