//! Removing the fencing counters of names nobody uses now.
//!
//! Every name ever locked leaves one key behind: its fencing counter (`…:distlock:fence`), which
//! never expires (the other keys of a name expire on their own). [`RedisBackend::remove_unused_fence_keys`]
//! finds them with `SCAN` on every server (every primary of a cluster) and deletes each one in a
//! script that first checks, atomically, that nothing of its name exists: no holder, readers,
//! permits, waiters or revoked attempts. Deleting a counter never lets a token go backwards: a
//! counter that is missing starts again at the server's clock in microseconds, above every
//! token the old one handed out, as after a restart without persistence; and this process
//! raises it to the largest token it has seen on its next acquire.

use std::sync::Arc;

use distlock_core::Result;
use fred::prelude::*;
use fred::types::{Key, Value};
use futures_util::StreamExt;

use crate::fault::fault;
use crate::keys::slot;
use crate::scripts::Scripts;
use crate::server::Server;
use crate::{BACKEND, RedisBackend};

/// What every fencing counter's key ends with: a lock's, then a semaphore's.
const FENCE_SUFFIXES: [(&str, &str); 2] = [
    (":distlock:fence", ""),
    (":distlock:semaphore:fence", "semaphore:"),
];

/// How many counters are checked at once (one script each: the keys of one name share a slot,
/// the keys of different names need not).
const BATCH: usize = 100;

/// The keys of one fencing counter's name that show the name in use, or `None` when `fence` is
/// not a distlock counter or its name is outside `prefix`. (The waiters' deadlines hash is not
/// among them: it outlives its waiters by design, and without a queue it holds only the arrival
/// counter, which may start again.) A counter's name cannot always be
/// read back (the key `{x}` and the wrapped key of the name `x` give the same companions), so
/// every candidate for the main key that shares the counter's slot is checked: a name in doubt
/// keeps its counter.
pub(crate) fn in_use_keys(fence: &str, prefix: &str) -> Option<Vec<String>> {
    let (stem, family) = FENCE_SUFFIXES
        .iter()
        .find_map(|(suffix, family)| fence.strip_suffix(suffix).map(|stem| (stem, *family)))?;
    let home = slot(fence.as_bytes());
    // The base (prefix + name) was the stem itself (it had a hash tag), the stem's inside
    // (wrapped in a tag of its own), or what follows a leading tag.
    let mut bases = vec![stem];
    if let Some(inside) = stem.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        bases.push(inside);
    }
    if let Some(rest) = stem
        .strip_prefix('{')
        .and_then(|s| s.split_once('}'))
        .map(|(_, r)| r)
    {
        bases.push(rest);
    }
    bases.retain(|b| !b.is_empty() && slot(b.as_bytes()) == home);
    if !bases.iter().any(|b| b.starts_with(prefix)) {
        return None;
    }
    let companion = |what: &str| format!("{stem}:distlock:{family}{what}");
    let mut keys = vec![
        companion(if family.is_empty() {
            "readers"
        } else {
            "holders"
        }),
        companion("queue"),
        companion("revoked"),
    ];
    if family.is_empty() {
        keys.extend(bases.iter().map(|b| (*b).to_owned()));
    } else {
        keys.push(companion("holder"));
    }
    Some(keys)
}

impl RedisBackend {
    /// Deletes the fencing counters of this provider's names (under its `keyPrefix`) that
    /// nobody holds, reads, waits on or is acquiring right now, on every server; returns how
    /// many. Safe while other clients use the names: each counter is checked and deleted in one
    /// script, and a counter that comes back later starts above every token it gave.
    pub async fn remove_unused_fence_keys(&self) -> Result<usize> {
        let mut removed = 0;
        for server in &self.inner.servers {
            removed += clean_server(server, &self.inner.opts.key_prefix).await?;
        }
        Ok(removed)
    }
}

async fn clean_server(server: &Arc<Server>, prefix: &str) -> Result<usize> {
    let fail = |e: fred::error::Error| {
        let message = format!("removing unused fencing counters: {}", server.explain(&e));
        fault(message, false).into_error(BACKEND, Some(&server.label))
    };
    let client = server.client().map_err(fail)?;
    server.connected(client).await.map_err(fail)?;
    if !client.is_connected() {
        return Err(fail(fred::error::Error::new(
            fred::error::ErrorKind::Timeout,
            "no connection",
        )));
    }
    let pattern = "*:distlock:*fence";
    let mut keys = if client.is_clustered() {
        client
            .scan_cluster_buffered(pattern, Some(1000), None)
            .boxed()
    } else {
        client.scan_buffered(pattern, Some(1000), None).boxed()
    };
    let mut removed = 0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let next = keys.next().await;
        let done = next.is_none();
        if let Some(key) = next {
            let key = key.map_err(fail)?;
            let Some(name) = key.as_str().map(|k| k.to_owned()) else {
                continue;
            };
            if let Some(in_use) = in_use_keys(&name, prefix) {
                let mut all = vec![Key::from(name)];
                all.extend(in_use.into_iter().map(Key::from));
                batch.push(Arc::<[Key]>::from(all));
            }
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            let script = &Scripts::get().clean;
            let runs = batch
                .drain(..)
                .map(|keys| server.eval(script, keys, Vec::new()));
            for answer in futures_util::future::join_all(runs).await {
                if let Value::Integer(1) = answer.map_err(fail)? {
                    removed += 1;
                }
            }
        }
        if done {
            return Ok(removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    #[test]
    fn a_counters_in_use_keys_are_its_names_keys() {
        for (prefix, name) in [
            ("", "orders:42"),
            ("app:", "x{tag}y"),
            ("", "a}b"),
            ("p:", "漢字"),
        ] {
            for (keys, semaphore) in [
                (Keys::lock(prefix, name), false),
                (Keys::semaphore(prefix, name), true),
            ] {
                let in_use = in_use_keys(&keys.fence, prefix).unwrap();
                let expected = if semaphore {
                    vec![&keys.set, &keys.queue, &keys.revoked, &keys.lock]
                } else {
                    vec![&keys.set, &keys.queue, &keys.revoked]
                };
                for k in expected {
                    assert!(in_use.contains(k), "{name:?}: {k} missing from {in_use:?}");
                }
                if !semaphore {
                    assert!(
                        in_use.contains(&keys.lock),
                        "{name:?}: main key {}",
                        keys.lock
                    );
                }
                for k in &in_use {
                    assert_eq!(
                        slot(k.as_bytes()),
                        keys.slot,
                        "{name:?}: {k} is in another slot"
                    );
                }
            }
        }
        assert!(
            in_use_keys("{x}:distlock:fence", "app:").is_none(),
            "outside the prefix"
        );
        assert!(in_use_keys("user:1", "").is_none(), "not a counter");
    }
}
