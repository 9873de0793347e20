//! The signal a held lock raises the moment it is known to be lost.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Fired at most once, with the reason, when a held lock is lost (lease expired without renewal,
/// session dropped, key taken by someone else, provider closed). Clones observe the same signal.
#[derive(Clone, Debug, Default)]
pub struct LostSignal {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    token: CancellationToken,
    reason: OnceLock<String>,
}

impl LostSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal with `reason`. Only the first call counts; returns whether it was this one.
    pub fn fire(&self, reason: impl Into<String>) -> bool {
        let first = self.inner.reason.set(reason.into()).is_ok();
        if first {
            self.inner.token.cancel();
        }
        first
    }

    /// Whether the signal has fired.
    pub fn is_lost(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// The reason it fired with, if it has.
    pub fn reason(&self) -> Option<&str> {
        self.inner.reason.get().map(String::as_str)
    }

    /// Waits until the signal fires and returns the reason.
    pub async fn lost(&self) -> String {
        self.inner.token.cancelled().await;
        self.inner.reason.get().cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_with_the_first_reason() {
        let s = LostSignal::new();
        let watcher = s.clone();
        let waiting = tokio::spawn(async move { watcher.lost().await });
        assert!(!s.is_lost());
        assert!(s.fire("lease expired"));
        assert!(!s.fire("second reason"));
        assert_eq!(waiting.await.unwrap(), "lease expired");
        assert_eq!(s.reason(), Some("lease expired"));
    }
}
