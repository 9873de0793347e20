//! Where a lock's keys live in etcd.
//!
//! Every key of a name is under `<keyPrefix><escaped name>/`, one key per waiting or holding
//! acquire. distlock's keys start with a marker:
//!
//! | marker | who |
//! |---|---|
//! | `lw` | a mutex or the writer side of a reader-writer lock (the same lock, as on Redis) |
//! | `lr` | a reader |
//! | `s`  | a semaphore holder; the value is its permit count in decimal |
//!
//! Any other key under the name is *foreign*: etcd's own lock recipe (`etcdctl lock`, the
//! server's Lock RPC, Go's `concurrency.Mutex`) writes `<name>/<lease ID in hex>`, and hex digits
//! are never `l` or `s`. A foreign key counts as an exclusive holder or waiter for every kind of
//! distlock lock of that name: whoever comes after it waits for it, as etcd's recipe itself waits
//! for every key with a smaller create revision. So the order of a name is the create revision
//! of all its keys, and each kind looks at these (see [`Keys::ahead`]):
//!
//! | kind | waits for the keys before it that are |
//! |---|---|
//! | mutex, writer | `l…` (writers, readers) and foreign |
//! | reader | `lw…` (writers) and foreign |
//! | semaphore | foreign, and the permits of the `s…` keys up to its own must fit `maxCount` |
//!
//! (distlock's mutex and its semaphore of one name stay apart from each other, as on the other
//! backends; only foreign keys are seen by both.)
//!
//! The name is escaped (`%` → `%25`, `/` → `%2F`) so that no name's keys fall under another
//! name's prefix: `a` and `a/lw` stay apart. `<unique>` is the key's lease in hex, a dash, and a
//! counter of this process, so a key is never written twice; every key is created with
//! `create_revision == 0` as its condition.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::grpc::wire::prefix_end;

/// The keys of one name and family (the lock family, or the semaphore).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// Every key of the name starts with this, whoever wrote it: `<keyPrefix><name>/`.
    pub name: String,
    /// Every key of the family starts with this: `…/l` or `…/s`.
    pub family: String,
}

/// Which side of the family a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Writer,
    Reader,
    Permits(u32),
}

/// What a key under a name is, by its marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `l…` but not a reader: a mutex or writer.
    Writer,
    /// `lr…`.
    Reader,
    /// `s…`.
    Permits,
    /// Anything else: written by someone else (etcd's lock recipe), an exclusive holder.
    Foreign,
}

/// A key range `[start, end)`.
pub(crate) type Span = (Vec<u8>, Vec<u8>);

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
    fn new(prefix: &str, name: &str, marker: &str) -> Self {
        let name = format!("{prefix}{}/", escape(name));
        Self {
            family: format!("{name}{marker}"),
            name,
        }
    }

    /// The lock family (mutex, reader-writer lock) of `name`.
    pub fn lock(prefix: &str, name: &str) -> Self {
        Self::new(prefix, name, "l")
    }

    /// The semaphore of `name`.
    pub fn semaphore(prefix: &str, name: &str) -> Self {
        Self::new(prefix, name, "s")
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

    /// `[<name>/<from>, <name>/<to>)`; `to` `None`: to the end of the name's keys.
    fn span(&self, from: &str, to: Option<&str>) -> Span {
        let start = format!("{}{from}", self.name).into_bytes();
        let end = match to {
            Some(to) => format!("{}{to}", self.name).into_bytes(),
            None => prefix_end(self.name.as_bytes()),
        };
        (start, end)
    }

    /// The key ranges under the name whose keys a `side` key waits for when they were created
    /// before it: the table in the module's doc, as ranges of markers. (A semaphore's own
    /// family is judged by its permits, apart from these.)
    pub fn ahead(&self, side: Side) -> Vec<Span> {
        match side {
            // Everything but the semaphore family.
            Side::Writer => vec![self.span("", Some("s")), self.span("t", None)],
            // Everything but the semaphore family and the lock family other than writers.
            Side::Reader => vec![
                self.span("", Some("l")),
                self.span("lw", Some("lx")),
                self.span("m", Some("s")),
                self.span("t", None),
            ],
            // Foreign keys only: neither family.
            Side::Permits(_) => vec![
                self.span("", Some("l")),
                self.span("m", Some("s")),
                self.span("t", None),
            ],
        }
    }

    /// What `key` (a key under the name) is.
    pub fn class(&self, key: &[u8]) -> Class {
        let tail = key.strip_prefix(self.name.as_bytes()).unwrap_or(key);
        match tail {
            [b'l', b'r', ..] => Class::Reader,
            [b'l', ..] => Class::Writer,
            [b's', ..] => Class::Permits,
            _ => Class::Foreign,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_share_a_prefix() {
        let a = Keys::lock("p/", "a");
        let b = Keys::lock("p/", "a/lw");
        assert_eq!(a.name, "p/a/");
        assert_eq!(a.family, "p/a/l");
        assert_eq!(b.family, "p/a%2Flw/l");
        assert!(!b.family.starts_with(&a.family));
        assert!(!b.name.starts_with(&a.name));
        assert_eq!(Keys::lock("", "100%").family, "100%25/l");
        let s = Keys::semaphore("p/", "a");
        assert_eq!((s.name.as_str(), s.family.as_str()), ("p/a/", "p/a/s"));
        let k1 = a.fresh(Side::Writer, 255);
        let k2 = a.fresh(Side::Reader, 255);
        assert!(k1.starts_with("p/a/lwff-"), "{k1}");
        assert!(k2.starts_with("p/a/lrff-"), "{k2}");
        assert_ne!(a.fresh(Side::Writer, 1), a.fresh(Side::Writer, 1));
        assert!(s.fresh(Side::Permits(2), 16).starts_with("p/a/s10-"));
    }

    fn inside(spans: &[Span], key: &str) -> bool {
        spans.iter().any(|(start, end)| {
            key.as_bytes() >= start.as_slice() && key.as_bytes() < end.as_slice()
        })
    }

    #[test]
    fn who_waits_for_whom() {
        let l = Keys::lock("p/", "a");
        let s = Keys::semaphore("p/", "a");
        let writer = l.fresh(Side::Writer, 0x694d);
        let reader = l.fresh(Side::Reader, 0x694d);
        let permits = s.fresh(Side::Permits(1), 0x694d);
        // etcdctl lock p/a: p/a/<lease hex>; every hex digit, first or not.
        let foreign = ["p/a/694d7a1b2c3d4e5f", "p/a/0", "p/a/f", "p/a/a", "p/a/"];
        // Another name's keys, and the bare name.
        let others = ["p/a", "p/a0", "p/ab/lw1-0", "p/a%2Flw/lw1-0"];
        for k in foreign {
            assert_eq!(l.class(k.as_bytes()), Class::Foreign, "{k}");
        }
        assert_eq!(l.class(writer.as_bytes()), Class::Writer);
        assert_eq!(l.class(reader.as_bytes()), Class::Reader);
        assert_eq!(s.class(permits.as_bytes()), Class::Permits);

        let w = l.ahead(Side::Writer);
        let r = l.ahead(Side::Reader);
        let p = s.ahead(Side::Permits(1));
        for k in foreign {
            assert!(inside(&w, k) && inside(&r, k) && inside(&p, k), "{k}");
        }
        for k in others {
            assert!(!inside(&w, k) && !inside(&r, k) && !inside(&p, k), "{k}");
        }
        assert!(inside(&w, &writer) && inside(&w, &reader) && !inside(&w, &permits));
        assert!(inside(&r, &writer) && !inside(&r, &reader) && !inside(&r, &permits));
        assert!(!inside(&p, &writer) && !inside(&p, &reader) && !inside(&p, &permits));
    }
}
