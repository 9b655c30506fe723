//! A stable 64-bit hash for routing keys and member ids.
//!
//! Every load-balancer replica must map a key to the same worker, today and
//! after an upgrade, so the hash cannot be `std`'s `DefaultHasher` (its
//! output may change between Rust releases). FNV-1a spreads bytes cheaply;
//! the SplitMix64 finaliser then mixes the bits so that similar keys
//! (`user-1`, `user-2`) land far apart.

/// FNV-1a over `bytes`, then a SplitMix64 finaliser.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix(h)
}

/// SplitMix64's finaliser: a bijection with full avalanche.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rendezvous (highest-random-weight) hashing's draw of `member_hash` for
/// `key_hash`. Each member's draw for a key is independent of every other
/// member, so when a member leaves only the keys it won move, and when one
/// joins it wins about its share from all the others. The owner is the
/// member with the highest draw: taken plainly for shards
/// (`faultline_transactions::sharding`), weighted for consistent hashing
/// ([`crate::strategy::ConsistentHash`]).
pub fn rendezvous(key_hash: u64, member_hash: u64) -> u64 {
    mix(key_hash ^ member_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pinned() {
        // Changing these values re-routes every key in a running cluster:
        // replicas on old and new versions would disagree.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(b"user-1"), 0xc499_b5f8_a721_df58);
        assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
    }
}
