//! Lock names to advisory-lock keys, identical to .NET DistributedLock's
//! `PostgresAdvisoryLockKey`, so .NET and Node processes contend on the same lock.
//!
//! PostgreSQL has two advisory key spaces that never conflict with each other: one `bigint`,
//! or a pair of `integer`s. A name maps to one of them:
//!
//! 1. ASCII names of at most 9 characters are packed into 64 bits, 7 bits per character from
//!    the top, then a 0 bit, then 1 bits to the end (so `"a"` and `"a\0"` differ), and used as
//!    the integer pair (high 32 bits, low 32 bits).
//! 2. 16 hexadecimal digits are one `bigint` (`"0000000000000001"` is key 1).
//! 3. Two groups of 8 hexadecimal digits separated by a comma are the integer pair
//!    (`"00000003,ffffffff"` is (3, -1)).
//! 4. Anything else is hashed: the first 8 bytes of SHA-1 of the UTF-8 name, read as a
//!    little-endian signed `bigint`.

use std::fmt;

use sha1::{Digest, Sha1};

/// The longest name packed as ASCII.
const MAX_ASCII_LEN: usize = 9;
/// Bits per packed ASCII character.
const ASCII_CHAR_BITS: u32 = 7;

/// An advisory-lock key: which of PostgreSQL's two key spaces, and the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdvisoryKey {
    /// `pg_advisory_lock(bigint)`.
    Bigint(i64),
    /// `pg_advisory_lock(integer, integer)`.
    Pair(i32, i32),
}

impl AdvisoryKey {
    /// The key DistributedLock uses for `name`.
    pub fn from_name(name: &str) -> Self {
        if let Some(packed) = encode_ascii(name) {
            return split(packed);
        }
        if let Some(key) = parse_hex(name) {
            return key;
        }
        AdvisoryKey::Bigint(hashed(name))
    }

    /// The SQL argument list for this key, e.g. `3, -1` or `42`.
    pub fn sql_args(self) -> String {
        self.to_string()
    }

    /// How `pg_locks` shows this key: `(classid, objid, objsubid)`, the ids as unsigned 32-bit
    /// numbers (a bigint key is split into its high and low halves, `objsubid` 1; a pair keeps
    /// its two halves, `objsubid` 2).
    pub fn pg_locks_columns(self) -> (u32, u32, u8) {
        match self {
            AdvisoryKey::Bigint(k) => ((k >> 32) as u32, k as u32, 1),
            AdvisoryKey::Pair(a, b) => (a as u32, b as u32, 2),
        }
    }
}

impl fmt::Display for AdvisoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdvisoryKey::Bigint(k) => write!(f, "{k}"),
            AdvisoryKey::Pair(a, b) => write!(f, "{a}, {b}"),
        }
    }
}

/// The first 8 bytes of SHA-1 of `text`, read as a little-endian signed integer.
pub fn hashed(text: &str) -> i64 {
    let digest = Sha1::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

fn encode_ascii(name: &str) -> Option<u64> {
    if name.len() > MAX_ASCII_LEN || !name.is_ascii() {
        return None;
    }
    let mut packed: u64 = 0;
    for byte in name.bytes() {
        packed = (packed << ASCII_CHAR_BITS) | u64::from(byte);
    }
    // A 0 bit ends the characters; 1 bits fill the rest.
    let fill = 64 - ASCII_CHAR_BITS * name.len() as u32 - 1;
    packed <<= 1;
    Some(if fill == 0 {
        packed
    } else {
        (packed << fill) | ((1u64 << fill) - 1)
    })
}

fn split(packed: u64) -> AdvisoryKey {
    AdvisoryKey::Pair((packed >> 32) as u32 as i32, packed as u32 as i32)
}

fn parse_hex(name: &str) -> Option<AdvisoryKey> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    match name.len() {
        16 if hex(name) => u64::from_str_radix(name, 16)
            .ok()
            .map(|k| AdvisoryKey::Bigint(k as i64)),
        17 if name.as_bytes()[8] == b',' && hex(&name[..8]) && hex(&name[9..]) => {
            let a = u32::from_str_radix(&name[..8], 16).ok()?;
            let b = u32::from_str_radix(&name[9..], 16).ok()?;
            Some(AdvisoryKey::Pair(a as i32, b as i32))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributed_lock_test_vectors() {
        assert_eq!(
            AdvisoryKey::from_name("0000000000000001"),
            AdvisoryKey::Bigint(1)
        );
        assert_eq!(
            AdvisoryKey::from_name("00000003,ffffffff"),
            AdvisoryKey::Pair(3, -1)
        );
        assert_eq!(
            AdvisoryKey::from_name(&"漢".repeat(18)),
            AdvisoryKey::Bigint(-5707277204051710361)
        );
        assert_eq!(
            AdvisoryKey::from_name("MyLockName"),
            AdvisoryKey::Bigint(4062898426641073528)
        );
        assert_eq!(
            AdvisoryKey::from_name("a"),
            AdvisoryKey::Pair(-1023410177, -1)
        );
        assert_eq!(
            AdvisoryKey::from_name(""),
            AdvisoryKey::Pair(2147483647, -1)
        );
    }

    #[test]
    fn ascii_packing_keeps_trailing_nul_and_uses_all_bits_at_nine_chars() {
        assert_ne!(AdvisoryKey::from_name("a"), AdvisoryKey::from_name("a\0"));
        // Nine characters fill 63 bits and the final 0 bit: no padding.
        let AdvisoryKey::Pair(_, low) = AdvisoryKey::from_name("\u{7f}".repeat(9).as_str()) else {
            panic!("pair")
        };
        assert_eq!(
            low, -2,
            "...1111110: the last character's bits, then the 0 end bit"
        );
        assert!(
            matches!(AdvisoryKey::from_name("abcdefghij"), AdvisoryKey::Bigint(_)),
            "10 chars are hashed"
        );
        assert!(
            matches!(AdvisoryKey::from_name("é"), AdvisoryKey::Bigint(_)),
            "non-ASCII is hashed"
        );
    }

    #[test]
    fn explicit_forms_need_exact_shapes() {
        assert_eq!(
            AdvisoryKey::from_name("ffffffffffffffff"),
            AdvisoryKey::Bigint(-1)
        );
        assert!(
            matches!(AdvisoryKey::from_name("000000000000000g"), AdvisoryKey::Bigint(k) if k != 0)
        );
        assert!(matches!(
            AdvisoryKey::from_name("00000003;ffffffff"),
            AdvisoryKey::Bigint(_)
        ));
        assert_eq!(
            AdvisoryKey::from_name("00000003,ffffffff").sql_args(),
            "3, -1"
        );
    }
}
