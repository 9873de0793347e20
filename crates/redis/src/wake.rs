//! Wake-ups from pub/sub: a release publishes on the lock's channel, and the waiters of this
//! process on that channel try again. A message names the waiter whose turn it is, or `*` for all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use distlock_core::sync::lock;
use tokio::sync::watch;

#[derive(Default)]
pub struct Wakes {
    channels: Mutex<HashMap<String, Channel>>,
}

struct Channel {
    tx: watch::Sender<u64>,
    members: Vec<String>,
}

impl Wakes {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        lock(&self.channels)
    }

    /// Registers `member` (kind + token) as waiting on `channel`.
    pub fn join(self: &Arc<Self>, channel: &str, member: String) -> Waiting {
        let mut map = self.map();
        let ch = map.entry(channel.to_owned()).or_insert_with(|| Channel {
            tx: watch::channel(0).0,
            members: Vec::new(),
        });
        ch.members.push(member.clone());
        Waiting {
            rx: ch.tx.subscribe(),
            wakes: self.clone(),
            channel: channel.to_owned(),
            member,
        }
    }

    /// A message arrived on `channel`.
    pub fn deliver(&self, channel: &str, payload: &str) {
        if let Some(ch) = self.map().get(channel)
            && (payload == "*" || ch.members.iter().any(|m| m == payload))
        {
            ch.tx.send_modify(|n| *n += 1);
        }
    }

    /// Wakes every waiter (messages may have been missed: a reconnect, a lagging receiver).
    pub fn wake_all(&self) {
        for ch in self.map().values() {
            ch.tx.send_modify(|n| *n += 1);
        }
    }
}

/// One waiter's registration; leaving drops it.
pub struct Waiting {
    rx: watch::Receiver<u64>,
    wakes: Arc<Wakes>,
    channel: String,
    member: String,
}

impl Waiting {
    /// Forgets wake-ups so far: call before each attempt, so a release that lands between the
    /// attempt and the wait is not missed.
    pub fn mark(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves at the next wake-up after [`Waiting::mark`].
    pub async fn woken(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.wakes.map();
        if let Some(ch) = map.get_mut(&self.channel) {
            if let Some(i) = ch.members.iter().position(|m| *m == self.member) {
                ch.members.swap_remove(i);
            }
            if ch.members.is_empty() {
                map.remove(&self.channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn targeted_and_broadcast_wakeups() {
        let wakes = Arc::new(Wakes::default());
        let mut a = wakes.join("c", "wA".into());
        let mut b = wakes.join("c", "wB".into());
        a.mark();
        b.mark();
        wakes.deliver("c", "wB");
        let quick = Duration::from_millis(20);
        assert!(tokio::time::timeout(quick, b.woken()).await.is_ok());
        // Both share the channel's counter: a targeted message wakes this process's waiters on
        // the channel, who retry; the server decides whose turn it is.
        a.mark();
        b.mark();
        wakes.deliver("c", "wZ");
        assert!(tokio::time::timeout(quick, a.woken()).await.is_err());
        wakes.deliver("other", "*");
        assert!(tokio::time::timeout(quick, a.woken()).await.is_err());
        wakes.deliver("c", "*");
        assert!(tokio::time::timeout(quick, a.woken()).await.is_ok());
        drop(a);
        drop(b);
        assert!(wakes.map().is_empty());
    }
}
