//! Where a lock's keys live in etcd.
//!
//! `<keyPrefix><escaped name>/<marker><unique>`, one key per waiting or holding acquire:
//!
//! | marker | who |
//! |---|---|
//! | `lw` | a mutex or the writer side of a reader-writer lock (the same lock, as on Redis) |
//! | `lr` | a reader |
//! | `s`  | a semaphore holder; the value is its permit count in decimal |
//!
//! The name is escaped (`%` → `%25`, `/` → `%2F`) so that no name's keys fall under another
//! name's prefix: `a` and `a/lw` stay apart. `<unique>` is the key's lease in hex, a dash, and a
//! counter of this process, so a key is never written twice; every key is created with
//! `create_revision == 0` as its condition.

use std::sync::atomic::{AtomicU64, Ordering};

/// The keys of one name and family (the lock family, or the semaphore).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// Every key of the family starts with this: `…/l` or `…/s`.
    pub family: String,
    /// Writers (and mutexes) start with this: `…/lw`; for a semaphore, the family again.
    pub writers: String,
}

/// Which side of the family a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Writer,
    Reader,
    Permits(u32),
}

fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

impl Keys {
    /// The lock family (mutex, reader-writer lock) of `name`.
    pub fn lock(prefix: &str, name: &str) -> Self {
        let family = format!("{prefix}{}/l", escape(name));
        Self {
            writers: format!("{family}w"),
            family,
        }
    }

    /// The semaphore of `name`.
    pub fn semaphore(prefix: &str, name: &str) -> Self {
        let family = format!("{prefix}{}/s", escape(name));
        Self {
            writers: family.clone(),
            family,
        }
    }

    /// A fresh key for `side` on `lease`.
    pub fn fresh(&self, side: Side, lease: i64) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let marker = match side {
            Side::Writer => "w",
            Side::Reader => "r",
            Side::Permits(_) => "",
        };
        format!("{}{marker}{lease:x}-{n:x}", self.family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_share_a_prefix() {
        let a = Keys::lock("p/", "a");
        let b = Keys::lock("p/", "a/lw");
        assert_eq!(a.family, "p/a/l");
        assert_eq!(a.writers, "p/a/lw");
        assert_eq!(b.family, "p/a%2Flw/l");
        assert!(!b.family.starts_with(&a.family));
        assert_eq!(Keys::lock("", "100%").family, "100%25/l");
        let s = Keys::semaphore("p/", "a");
        assert_eq!(s.family, "p/a/s");
        let k1 = a.fresh(Side::Writer, 255);
        let k2 = a.fresh(Side::Reader, 255);
        assert!(k1.starts_with("p/a/lwff-"), "{k1}");
        assert!(k2.starts_with("p/a/lrff-"), "{k2}");
        assert_ne!(a.fresh(Side::Writer, 1), a.fresh(Side::Writer, 1));
        assert!(s.fresh(Side::Permits(2), 16).starts_with("p/a/s10-"));
    }
}
