//! Taking grants back: the release of a held lock on every server (done at quorum), and the
//! revoke of an attempt the caller gave up on, retried in the background until its server
//! answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::types::Value;
use tokio::time::Instant;

use crate::fan::Fan;
use crate::fault::transient;
use crate::machine::ms;
use crate::machine::vote::ReleaseVote;
use crate::machine::waiter::PATIENCE;
use crate::op::Op;
use crate::scripts::Scripts;
use crate::{Inner, MAX_REVOKES, REVOKE_FOR};

impl Inner {
    fn release_args(&self, op: &Op, floor: u64, revoke: Option<Duration>) -> Vec<Value> {
        vec![
            Value::from(op.side.code().as_ref()),
            Value::from(op.id.as_ref()),
            Value::from(if self.fair { "1" } else { "0" }),
            Value::from(op.keys.channel.as_str()),
            Value::from(i64::try_from(floor).unwrap_or(i64::MAX)),
            Value::from(revoke.map_or(0, ms)),
        ]
    }

    /// Takes the attempt `op` back on every server (see [`Inner::revoke`]).
    pub(crate) fn revoke_all(self: &Arc<Self>, op: &Op, lease: Duration) {
        for i in 0..self.servers.len() {
            self.revoke(i, op.clone(), lease);
        }
    }

    /// Takes the attempt `op` back on server `server`, in the background: releases its grant
    /// if it was granted, else marks its token revoked so the request, should it still reach
    /// the server (a stalled server, a request buffered on a dead connection), cannot grant.
    /// Retries until the server answers, for at most [`REVOKE_FOR`] or until the provider closes.
    pub(crate) fn revoke(self: &Arc<Self>, server: usize, op: Op, lease: Duration) {
        if self.revokes.fetch_add(1, Ordering::AcqRel) >= MAX_REVOKES {
            self.revokes.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(server = %self.servers[server].label, "distlock: too many revokes in flight; the lease alone ends this attempt's grant");
            return;
        }
        let inner = self.clone();
        // Long enough for any request still on its way: it was sent before the revoke.
        let remember = (lease * 2).max(Duration::from_secs(60));
        tokio::spawn(async move {
            let args = inner.release_args(&op, 0, Some(remember));
            let until = Instant::now() + REVOKE_FOR;
            // Paced like an acquire riding out trouble.
            let pause = PATIENCE.fault_pause;
            let mut backoff = pause.first;
            while Instant::now() < until && !inner.core.closed().is_cancelled() {
                let s = &inner.servers[server];
                // Nothing can reach a server that refuses connections: wait for it to come
                // back rather than queue commands that can only time out.
                if s.last_error().is_some() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(pause.max);
                    continue;
                }
                if s.eval_text(&Scripts::get().release, op.keys(), args.clone())
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(pause.max);
            }
            inner.revokes.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Releases on every server; done once a quorum answered (the rest finish in the
    /// background). A server that could not be reached is revoked in the background, so a
    /// late grant cannot outlive the release. Fails only if no server answered.
    ///
    /// A server outside `by` (the quorum that granted) may not have answered the acquire yet,
    /// and its answer can come on another connection than this release (the event loop's, or
    /// the background client's): there the release also leaves the attempt revoked, so an
    /// acquire that lands after it grants nothing.
    pub(crate) async fn release(
        self: &Arc<Self>,
        op: &Op,
        floor: u64,
        lease: Duration,
        by: &[usize],
    ) -> std::result::Result<(), String> {
        let script = &Scripts::get().release;
        let plain = self.release_args(op, floor, None);
        if self.servers.len() == 1 {
            // In place, with no fan-out to set up. A caller that stops waiting (its bound)
            // leaves a revoke behind, as the fan-out's background finish would.
            let s = &self.servers[0];
            let mut unfinished = RevokeOnDrop(Some((self.clone(), op.clone(), lease)));
            let mut answer = s.eval(script, op.keys(), plain.clone()).await;
            if answer.as_ref().is_err_and(transient) {
                // The connection broke under it (a reset, a server that dropped its clients):
                // once more, on the connection that replaces it. A release is idempotent (it
                // removes this grant's token only), and the caller's bound covers both.
                answer = s.eval(script, op.keys(), plain).await;
            }
            unfinished.0 = None;
            return answer.map(drop).map_err(|e| {
                self.revoke(0, op.clone(), lease);
                s.explain(&e)
            });
        }
        let revoking = self.release_args(op, floor, Some(lease));
        let mut rx = Fan::new(self.servers.iter().enumerate().map(|(i, s)| {
            let args = if by.contains(&i) {
                plain.clone()
            } else {
                revoking.clone()
            };
            let (inner, s, op) = (self.clone(), s.clone(), op.clone());
            async move {
                s.eval(script, op.keys(), args)
                    .await
                    .map(drop)
                    .map_err(|e| {
                        inner.revoke(i, op, lease);
                        s.explain(&e)
                    })
            }
        }));
        let mut vote = ReleaseVote::new(self.quorum);
        while let Some((_, answer)) = rx.next().await {
            if vote.count(answer).is_some() {
                // The other servers' releases go on in the background.
                rx.rest(|_, _| {});
                return Ok(());
            }
        }
        vote.finish()
    }
}

/// Revokes an attempt on the one server when dropped armed: a release whose caller stopped
/// waiting before the answer came.
struct RevokeOnDrop(Option<(Arc<Inner>, Op, Duration)>);

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        if let Some((inner, op, lease)) = self.0.take()
            && let Some(rt) = inner.runtime.get().cloned()
        {
            let _in_runtime = rt.enter();
            inner.revoke(0, op, lease);
        }
    }
}
