//! Key encodings shared by every column family.
//!
//! Composite keys are their parts joined by [`SEP`] (0xFF, a byte that never occurs in UTF-8, so
//! no identifier can contain it and a prefix scan on `part ++ SEP` never matches a longer part).
//! Numbers are big-endian `u64` so that byte order is numeric order and prefix scans come out
//! sorted.

/// Separator between the parts of a composite key.
pub const SEP: u8 = 0xFF;

/// Joins key parts with [`SEP`].
pub fn join<const N: usize>(parts: [&[u8]; N]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len() + 1).sum();
    let mut key = Vec::with_capacity(len);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

/// The prefix that selects every key whose first part is `part`.
pub fn prefix(part: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(part.len() + 1);
    key.extend_from_slice(part);
    key.push(SEP);
    key
}

/// The smallest key above every key that starts with `prefix` (`None` when there is none):
/// the upper bound of a prefix scan.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Splits a composite key back into its parts.
pub fn split(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key.split(|b| *b == SEP)
}

pub fn u64_be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn parse_u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_exactly_the_prefix() {
        let prefix = prefix(b"user");
        let end = prefix_end(&prefix).unwrap();
        assert_eq!(end, b"uses");
        for inside in [
            join([b"user", b""]),
            join([b"user", b"\xff\xff"]),
            join([b"user", b"z"]),
        ] {
            assert!(inside.as_slice() >= prefix.as_slice() && inside.as_slice() < end.as_slice());
        }
        for outside in [
            b"uses".to_vec(),
            b"user".to_vec(),
            b"user0".to_vec(),
            b"usf".to_vec(),
        ] {
            assert!(
                !(outside.as_slice() >= prefix.as_slice() && outside.as_slice() < end.as_slice())
            );
        }
        assert_eq!(prefix_end(&[0x01, 0xFF, 0xFF]), Some(vec![0x02]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(&[]), None);
    }

    #[test]
    fn join_and_split_round_trip() {
        let key = join([b"@a:x", b"DEVICE"]);
        assert_eq!(key, b"@a:x\xffDEVICE");
        let parts: Vec<&[u8]> = split(&key).collect();
        assert_eq!(parts, vec![&b"@a:x"[..], &b"DEVICE"[..]]);
    }

    #[test]
    fn prefix_does_not_match_longer_first_part() {
        let p = prefix(b"@a:x");
        assert!(join([b"@a:x", b"D"]).starts_with(&p));
        assert!(!join([b"@a:xy", b"D"]).starts_with(&p));
    }

    #[test]
    fn big_endian_sorts_numerically() {
        assert!(u64_be(2) < u64_be(256));
        assert_eq!(parse_u64_be(&u64_be(77)), Some(77));
        assert_eq!(parse_u64_be(b"short"), None);
    }

    /// Properties over generated keys (proptest; `PROPTEST_CASES` sets how many cases, see
    /// `scripts/property-tests`).
    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Whether `key` falls in the range a prefix scan of `part` reads.
        fn in_scan_of(part: &[u8], key: &[u8]) -> bool {
            let start = prefix(part);
            key >= start.as_slice() && prefix_end(&start).is_none_or(|end| key < end.as_slice())
        }

        proptest! {
            /// A prefix scan of a first part reads exactly the keys whose first part it is —
            /// never those of a longer or shorter identifier that shares its beginning.
            #[test]
            fn a_prefix_scan_reads_exactly_its_first_part(
                a in "\\PC{0,12}",
                b in "\\PC{0,12}",
                rest in proptest::collection::vec(any::<u8>(), 0..12),
            ) {
                let key = join([b.as_bytes(), &rest]);
                prop_assert_eq!(in_scan_of(a.as_bytes(), &key), a == b);
            }

            /// Parts without the separator (any UTF-8 text) come back from a key unchanged.
            #[test]
            fn parts_round_trip(a in "\\PC{0,12}", b in "\\PC{0,12}", c in "\\PC{0,12}") {
                let key = join([a.as_bytes(), b.as_bytes(), c.as_bytes()]);
                let parts: Vec<&[u8]> = split(&key).collect();
                prop_assert_eq!(parts, vec![a.as_bytes(), b.as_bytes(), c.as_bytes()]);
            }

            /// Counts keep their numeric order inside a composite key, and parse back.
            #[test]
            fn counts_keep_their_order(part in "\\PC{0,12}", x in any::<u64>(), y in any::<u64>()) {
                let kx = join([part.as_bytes(), &u64_be(x)]);
                let ky = join([part.as_bytes(), &u64_be(y)]);
                prop_assert_eq!(kx.cmp(&ky), x.cmp(&y));
                prop_assert_eq!(parse_u64_be(&kx[kx.len() - 8..]), Some(x));
                prop_assert!(in_scan_of(part.as_bytes(), &kx));
            }
        }
    }
}
