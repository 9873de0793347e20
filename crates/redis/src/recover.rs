//! After a connection loss: following the servers' connection events, confirming a server's
//! locks round after round until it is sure of them again, and the fencing floors those rounds
//! (and every acquire) raise the servers' counters back to.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use distlock_core::CancellationToken;
use distlock_core::sync::lock;
use fred::types::{Key, Value};
use tokio::sync::mpsc;

use crate::doubt::Event;
use crate::keys::Keys;
use crate::machine::confirm::{Confirmation, Next};
use crate::scripts::Scripts;
use crate::server::Server;
use crate::{Inner, MAX_FLOORS};

impl Inner {
    /// The fencing floor of `keys`: the largest token this provider has seen for the name.
    pub(crate) fn floor(&self, keys: &Keys) -> u64 {
        lock(&self.floors).get(&keys.fence).map_or(0, |f| f.0)
    }

    /// Remembers `fence` as seen for `keys`, so no later grant hands out a smaller token.
    pub(crate) fn saw(&self, keys: &Keys, fence: u64) {
        let mut floors = lock(&self.floors);
        if floors.len() >= MAX_FLOORS && !floors.contains_key(&keys.fence) {
            // Bounded memory: start over (the counters on the servers keep the floors unless
            // one restarts empty; the README names this residual case).
            floors.clear();
        }
        let f = floors.entry(keys.fence.clone()).or_insert((0, keys.slot));
        f.0 = f.0.max(fence);
    }

    /// Makes sure server `i`'s locks, in doubt after a loss or reconnect, are being confirmed:
    /// starts the confirmation, or wakes the running one for a round at once.
    fn confirm_soon(self: &Arc<Self>, i: usize) {
        let server = &self.servers[i];
        if server.in_doubt() && server.begin_confirming() {
            tokio::spawn(confirming(Arc::downgrade(self), i));
        }
    }

    /// One confirmation round on server `i`: renew every held lock at once (a key that is gone
    /// fires its lock's lost signal), raise the fencing counters this provider saw back to
    /// their floors. `true` when server `i` answered all of it.
    async fn confirm_round(self: &Arc<Self>, i: usize) -> bool {
        let server = &self.servers[i];
        let renewed = self.renewals.renew_all(self, i).await;
        let floors: Vec<(String, u64, u16)> = lock(&self.floors)
            .iter()
            .map(|(k, f)| (k.clone(), f.0, f.1))
            .collect();
        let mut groups: HashMap<u16, Vec<(String, u64)>> = HashMap::new();
        for (k, f, slot) in floors {
            groups
                .entry(if self.cluster { slot } else { 0 })
                .or_default()
                .push((k, f));
        }
        let mut restored = true;
        for (_, group) in groups {
            for chunk in group.chunks(500) {
                let keys: Vec<Key> = chunk.iter().map(|(k, _)| Key::from(k.as_str())).collect();
                let args: Vec<Value> = chunk
                    .iter()
                    .map(|(_, f)| Value::from(i64::try_from(*f).unwrap_or(i64::MAX)))
                    .collect();
                restored &= server
                    .eval(&Scripts::get().floor, Arc::from(keys), args)
                    .await
                    .is_ok();
            }
        }
        renewed && restored
    }
}

/// Confirms server `i`'s locks, round after round ([`machine::confirm`]), until a round is
/// answered in full with no loss in between, or the provider closes; while a Sentinel failover
/// holds the locks, it waits for the failover's end. Between rounds it holds no reference to the
/// provider.
async fn confirming(inner: Weak<Inner>, i: usize) {
    let mut pacing = None;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let server = me.servers[i].clone();
        let c = pacing.get_or_insert_with(|| Confirmation::new(me.opts.server_timeout));
        if me.core.closed().is_cancelled() {
            return;
        }
        if !server.in_doubt() {
            // Ended, unless the locks fell in doubt again just now (then the next round runs).
            if server.end_confirming() {
                continue;
            }
            return;
        }
        if let Some(left) = server.doubt().hold_left() {
            // The sentinels' announcement of the failover's end wakes it.
            let closed = me.core.closed().clone();
            drop(me);
            nap(&server, &closed, left).await;
            continue;
        }
        let losses = server.doubt().losses();
        let answered = me.confirm_round(i).await;
        match c.ended(answered, server.doubt().losses() == losses) {
            Next::Confirmed => server.doubt().confirmed(losses),
            Next::Retry(pause) => {
                let closed = me.core.closed().clone();
                drop(me);
                nap(&server, &closed, pause).await;
            }
        }
    }
}

/// Waits `d` between confirmation rounds, less when the connection comes back (the server's
/// confirmation is kicked) or the provider closes.
async fn nap(server: &Server, closed: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = server.kicked() => {}
        _ = closed.cancelled() => {}
    }
}

/// Follows the servers' connection events for as long as the provider lives.
pub(crate) async fn follow(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut connected_before: Vec<bool> = Vec::new();
    while let Some(event) = rx.recv().await {
        let Some(me) = inner.upgrade() else { return };
        if me.core.closed().is_cancelled() {
            return;
        }
        connected_before.resize(me.servers.len(), false);
        match event {
            Event::Lost(i) => {
                tracing::debug!(server = %me.servers[i].label, "distlock: connection lost; its locks are in doubt until confirmed");
                me.emit(distlock_core::BackendEvent::Disconnected {
                    server: me.servers[i].label.clone(),
                });
                // Confirmed once the connection answers again, whether or not a reconnect is
                // announced (a loss can be counted after the reconnect that followed it).
                me.confirm_soon(i);
            }
            Event::Connected(i) => {
                // Any reconnect may have reached another server (a restart, a failover).
                if std::mem::replace(&mut connected_before[i], true) {
                    me.servers[i].doubt().suspect();
                    me.emit(distlock_core::BackendEvent::Reconnected {
                        server: me.servers[i].label.clone(),
                    });
                }
                me.confirm_soon(i);
            }
        }
    }
}
