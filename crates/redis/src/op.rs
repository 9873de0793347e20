//! One lock operation's identity: which keys and which side of the lock, the waiter's place in
//! the server queue, and the grant token of each attempt.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use fred::types::Key;

use crate::keys::Keys;
use crate::scripts;

/// A 128-bit token in hex after [`scripts::OWN`], unique per grant (and per waiter): 64 random
/// bits drawn once per process (two processes share them with odds of 2^-64), then a counter.
/// Cheap: no system call and one allocation per token, on the hot path of every acquire. The
/// mark tells the acquire script that a holder is one of distlock's, whose release wakes the
/// waiters (see [`crate::machine::waiter::FOREIGN_REFRESH`]).
pub(crate) fn token() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: the clock and the process id, still unique on this machine.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            return t ^ (u64::from(std::process::id()) << 32);
        }
        u64::from_le_bytes(bytes)
    });
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(scripts::OWN.len() + 32);
    out.push_str(scripts::OWN);
    for v in [prefix, n] {
        for shift in (0..16).rev() {
            let digit = ((v >> (shift * 4)) & 0xf) as u8;
            out.push(char::from(if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            }));
        }
    }
    out
}

/// A random number below `n` (n > 0), from OS randomness (or the clock).
pub(crate) fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return u64::from(t) % n.max(1);
    }
    u64::from_le_bytes(bytes) % n.max(1)
}

/// One primitive's side: `w` mutex or writer, `r` reader, `s` semaphore permits (how many).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Side {
    W,
    R,
    S(u32),
}

impl Side {
    /// The kind argument of the scripts: `w`, `r`, `s` for one permit, `s<k>:` for k permits.
    pub(crate) fn code(self) -> std::borrow::Cow<'static, str> {
        match self {
            Side::W => "w".into(),
            Side::R => "r".into(),
            Side::S(1) => "s".into(),
            Side::S(k) => format!("s{k}:").into(),
        }
    }
}

/// The request-independent part of one lock operation.
#[derive(Clone)]
pub(crate) struct Op {
    pub(crate) keys: Arc<Keys>,
    pub(crate) side: Side,
    /// The waiter's place in the server queue, the same for all its attempts.
    pub(crate) waiter: Arc<str>,
    /// The grant token of one attempt (and, once granted, of the held lock).
    pub(crate) id: Arc<str>,
    /// `keys` as script keys, built once per operation and shared by its scripts.
    pub(crate) key_list: Arc<[Key]>,
}

impl Op {
    /// The same operation with the fresh grant token of a new attempt.
    pub(crate) fn attempt(&self) -> Op {
        Op {
            id: Arc::from(token()),
            ..self.clone()
        }
    }

    /// An operation on `keys` for the waiter `waiter` (its first attempt's token too).
    pub(crate) fn new(keys: Keys, side: Side, waiter: Arc<str>) -> Op {
        let key_list = keys.all().iter().map(|k| Key::from(*k)).collect();
        Op {
            keys: Arc::new(keys),
            side,
            id: waiter.clone(),
            waiter,
            key_list,
        }
    }

    pub(crate) fn keys(&self) -> Arc<[Key]> {
        self.key_list.clone()
    }

    /// The key whose member or value is this grant (the main key, or the set).
    pub(crate) fn grant_key(&self) -> &str {
        if self.side == Side::W {
            &self.keys.lock
        } else {
            &self.keys.set
        }
    }
}
