//! How a lock name becomes Redis keys.
//!
//! The mutex (and the writer side of a reader-writer lock) is the key `keyPrefix + name` holding a
//! random token, exactly as the `redlock` npm package lays it out, so the two exclude each other.
//! Everything else a lock needs (readers, the fencing counter, the waiter queue) lives in
//! companion keys that hash to the same Redis Cluster slot as the main key, so one Lua script can
//! touch them all on a cluster too.

use std::sync::OnceLock;

/// The Redis Cluster slot of `key` (CRC16/XMODEM of the hash tag, or of the whole key).
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % 16384
}

/// The part of `key` Redis Cluster hashes: the bytes between the first `{` and the first `}`
/// after it, if that is non-empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A short string for every slot that hashes to it, found once by counting upwards.
fn slot_tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = tags.len();
        let mut n: u64 = 0;
        while missing > 0 {
            let s = n.to_string();
            let t = &mut tags[usize::from(crc16(s.as_bytes()) % 16384)];
            if t.is_empty() {
                *t = s;
                missing -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// The keys of one lock (or semaphore) name.
#[derive(Clone, Debug)]
pub struct Keys {
    /// The main key: the token of the mutex or writer (redlock's layout).
    pub lock: String,
    /// Sorted set of reader or semaphore-holder tokens, scored by their server-time expiry.
    pub set: String,
    /// The fencing counter (never expires).
    pub fence: String,
    /// Sorted set of waiters in arrival order.
    pub queue: String,
    /// Hash of waiter deadlines (server time), plus the arrival counter.
    pub deadlines: String,
    /// Sorted set of grant tokens revoked before their acquire ran (a request that timed out
    /// or failed may still reach the server later; it must not grant then), scored by expiry.
    pub revoked: String,
    /// The pub/sub channel releases publish on when someone waits.
    pub channel: String,
    /// The cluster slot all of these keys share.
    pub slot: u16,
}

/// The pattern that matches every channel of [`Keys::channel`].
pub const CHANNEL_PATTERN: &str = "distlock:*";

impl Keys {
    /// The keys of a mutex or reader-writer lock `name`.
    pub fn lock(prefix: &str, name: &str) -> Self {
        Self::build(format!("{prefix}{name}"), "")
    }

    /// The keys of a semaphore `name`: a separate family, so a semaphore never blocks a lock of
    /// the same name.
    pub fn semaphore(prefix: &str, name: &str) -> Self {
        Self::build(format!("{prefix}{name}"), "semaphore:")
    }

    fn build(base: String, family: &str) -> Self {
        let slot = slot(base.as_bytes());
        // A companion key keeps the base's slot: append to the base when it has a hash tag
        // (the first tag stays the first), else wrap the base in a tag of its own, or, when the
        // base holds a `}` that would end such a tag early, lead with a tag known to hash to
        // the base's slot.
        let stem = if hash_tag(base.as_bytes()).is_some() {
            base.clone()
        } else if !base.contains('}') {
            format!("{{{base}}}")
        } else {
            format!("{{{}}}{base}", slot_tags()[usize::from(slot)])
        };
        let companion = |what: &str| format!("{stem}:distlock:{family}{what}");
        let lock = if family.is_empty() {
            base
        } else {
            companion("holder")
        };
        Self {
            set: companion(if family.is_empty() {
                "readers"
            } else {
                "holders"
            }),
            fence: companion("fence"),
            queue: companion("queue"),
            deadlines: companion("queue-deadlines"),
            revoked: companion("revoked"),
            channel: format!("distlock:{}", companion("wake")),
            lock,
            slot,
        }
    }

    /// The keys in the order the scripts take them.
    pub fn all(&self) -> [&str; 6] {
        [
            &self.lock,
            &self.set,
            &self.fence,
            &self.queue,
            &self.deadlines,
            &self.revoked,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Reference values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
    }

    #[test]
    fn companions_share_the_main_keys_slot() {
        for name in [
            "orders:42",
            "a}b",
            "}{",
            "x{tag}y",
            "{}",
            "a{b",
            "漢字",
            "semi}{colon}",
        ] {
            for keys in [Keys::lock("app:", name), Keys::semaphore("", name)] {
                for k in keys.all() {
                    assert_eq!(slot(k.as_bytes()), keys.slot, "{name:?} -> {k:?}");
                }
            }
        }
        let k = Keys::lock("", "orders:42");
        assert_eq!(
            k.lock, "orders:42",
            "the main key is redlock's: prefix + name"
        );
        assert_eq!(k.fence, "{orders:42}:distlock:fence");
        assert_ne!(Keys::semaphore("", "x").fence, Keys::lock("", "x").fence);
    }
}
