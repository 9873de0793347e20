//! The acquire driver: carries out the waiter's steps ([`crate::machine::waiter`]) on the
//! servers — the attempts (one script per server, decided by the machine's [`Vote`]), the
//! wake-ups, the naps — and turns how it ended into the caller's result.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::{
    AcquireRequest, Admitted, Cause, End, Fault, Held, Result, Waited, race, wait_turn,
};
use fred::types::Value;
use tokio::time::Instant;

use crate::fan::{Fan, send_now};
use crate::fault::{fault, show, transient};
use crate::machine::ms;
use crate::machine::vote::{Reply, Verdict, Vote, late_needs_revoke};
use crate::machine::waiter::{Action, Input, Now, Waiter, unheard};
use crate::op::{Op, random_below};
use crate::scripts::Scripts;
use crate::wake::Waiting;
use crate::{BACKEND, Inner};

impl Inner {
    /// Runs one admitted acquire: its in-process turn, then the waiter's steps, until a grant
    /// or the end the waiter names.
    pub(crate) async fn acquire(
        self: Arc<Self>,
        req: AcquireRequest,
        op: Op,
        max: u32,
        admitted: Admitted<()>,
    ) -> Result<Option<Held>> {
        let Admitted { entry, mut ticket } = admitted;
        self.start();
        let start = Instant::now();
        let cancel = req.cancel.as_ref();
        if !ticket.is_granted() {
            let deadline = req.timeout.deadline(start);
            let turn = wait_turn(&req, &mut ticket, deadline, self.core.closed()).await;
            if let Err(why) = turn {
                return why.into_outcome(&req, BACKEND);
            }
        }
        let lease = req.lease.unwrap_or(self.opts.lease);
        let reporter = distlock_core::Reporter::of(self.observer.get(), &req, BACKEND);
        let mut w = Waiter::new(self.fair, self.opts.server_timeout, req.timeout, start)
            .reporting(reporter);
        let mut waiting: Option<Waiting> = None;
        let mut random = random_below;
        // Which servers answered the last attempt: an acquire that ends without a grant names
        // the others.
        let mut heard = vec![false; self.servers.len()];
        let (mut attempt, mut sent) = (op.clone(), start);
        let mut input = Input::Begin;
        loop {
            let first = &self.servers[0];
            let action = w.step(
                input,
                &mut Now {
                    at: Instant::now(),
                    confirming: first.in_doubt().then_some(first.label.as_str()),
                    subscribed: self.servers.iter().all(|s| s.subscribed()),
                    random: &mut random,
                },
            );
            input = match action {
                // Stopped while the last step ran: nothing more is sent.
                Action::Attempt { .. } if self.core.closed().is_cancelled() => Input::Closed,
                Action::Attempt { .. } if cancel.is_some_and(|c| c.is_cancelled()) => {
                    Input::Cancelled
                }
                Action::Attempt { until, join } => {
                    if join {
                        self.subscribe();
                        let member = format!("{}{}", op.side.code(), op.waiter);
                        waiting = Some(self.wakes.join(&op.keys.channel, member));
                    }
                    if let Some(wt) = waiting.as_mut() {
                        wt.mark();
                    }
                    attempt = op.attempt();
                    // The lease counts from here: before the request left.
                    sent = Instant::now();
                    heard.fill(false);
                    let trying = self.try_once(&attempt, lease, max, w.queue_ttl(), &mut heard);
                    match race(trying, until, cancel, self.core.closed()).await {
                        Waited::Done(verdict) => Input::Verdict(verdict),
                        cut => {
                            // The attempt may still reach a server: take it back everywhere.
                            self.revoke_all(&attempt, lease);
                            match cut {
                                Waited::Cancelled => Input::Cancelled,
                                Waited::Closed => Input::Closed,
                                _ => Input::Cut {
                                    unreachable: self.unreachable(),
                                },
                            }
                        }
                    }
                }
                Action::Sleep { until } => {
                    let sleeping = tokio::time::sleep_until(until);
                    timer(race(sleeping, None, cancel, self.core.closed()).await)
                }
                Action::Wait { until } => {
                    let woken = async {
                        match waiting.as_mut() {
                            Some(wt) => wt.woken().await,
                            None => std::future::pending().await,
                        }
                    };
                    match race(woken, until, cancel, self.core.closed()).await {
                        Waited::Done(()) => Input::Woken,
                        other => timer(other),
                    }
                }
                Action::Granted { fence, by } => {
                    let held = self.grant(&req, attempt, fence, by, lease, sent, entry, ticket);
                    return Ok(Some(held));
                }
                Action::Done(end) => {
                    self.leave(&op, &w);
                    return self.ended(end, &req, &heard);
                }
            };
        }
    }

    /// The caller's result of an acquire that ended without a grant (core's one rule for busy
    /// versus trouble), naming the servers that did not answer its last attempt.
    fn ended(&self, end: End, req: &AcquireRequest, heard: &[bool]) -> Result<Option<Held>> {
        let labels: Vec<&str> = self.servers.iter().map(|s| s.label.as_str()).collect();
        let end = match end {
            // A failure no retry cures, or a try's: named with the lock it was acquiring.
            End::Failed(f) => End::Failed(Fault {
                message: format!("acquiring {}: {}", req.target(BACKEND), f.message),
                cause: Cause {
                    message: Some(f.message),
                    ..f.cause
                },
                transient: f.transient,
            }),
            other => other,
        };
        end.into_result(req, BACKEND, &unheard(&labels, heard))
    }

    /// Why no quorum can be reached now, if so.
    fn unreachable(&self) -> Option<String> {
        let down: Vec<String> = self
            .servers
            .iter()
            .filter_map(|s| {
                s.unreachable_because()
                    .map(|e| format!("{} ({e})", s.label))
            })
            .collect();
        crate::machine::waiter::unreachable(&down, self.servers.len(), self.quorum)
    }

    /// Starts the wake-up subscriptions (once). A server that cannot be reached is not an
    /// error: waiters re-check on their own until the subscription is up.
    fn subscribe(self: &Arc<Self>) {
        for s in &self.servers {
            if let Err(e) = s.subscribe(&self.wakes) {
                tracing::warn!(server = %s.label, error = %e, "distlock: cannot subscribe to wake-ups; waiters will poll");
            }
        }
    }

    /// Takes a waiter out of the server queue in the background (it would expire anyway).
    fn leave(self: &Arc<Self>, op: &Op, w: &Waiter) {
        if !w.queues() {
            return;
        }
        let (inner, op) = (self.clone(), op.clone());
        // Sent from here (on the event loop, on the connection the waiter's attempts took, so
        // it cannot overtake one of them), finished in the background.
        send_now(async move {
            let args = vec![
                Value::from(op.side.code().as_ref()),
                Value::from(op.waiter.as_ref()),
                Value::from(op.keys.channel.as_str()),
            ];
            let _ = inner.servers[0]
                .eval(&Scripts::get().leave, op.keys(), args)
                .await;
        });
    }

    fn acquire_args(&self, op: &Op, lease: Duration, max: u32, wait: Duration) -> Vec<Value> {
        vec![
            Value::from(op.side.code().as_ref()),
            Value::from(op.id.as_ref()),
            Value::from(ms(lease)),
            Value::from(i64::from(max)),
            Value::from(ms(wait)),
            Value::from(if self.fair { "1" } else { "0" }),
            Value::from(op.keys.channel.as_str()),
            Value::from(op.waiter.as_ref()),
            Value::from(i64::try_from(self.floor(&op.keys)).unwrap_or(i64::MAX)),
        ]
    }

    /// One attempt on the server, or on every RedLock server, decided by the machine's
    /// [`Vote`]. Whatever does not end in a grant is revoked where it may have landed,
    /// including answers that arrive after the verdict.
    async fn try_once(
        self: &Arc<Self>,
        op: &Op,
        lease: Duration,
        max: u32,
        wait: Duration,
        heard: &mut [bool],
    ) -> Verdict {
        let script = &Scripts::get().acquire;
        let args = self.acquire_args(op, lease, max, wait);
        let sent = Instant::now();
        let mut vote = Vote::new(self.servers.len(), self.quorum);
        if self.servers.len() == 1 {
            // Polled in place: no fan-out to set up for one server.
            let answer = self.servers[0].eval(script, op.keys(), args).await;
            let reply = self.reply(0, answer);
            heard[0] = !matches!(reply, Reply::Failed(_));
            if vote.count(0, reply) {
                self.revoke(0, op.clone(), lease);
            }
            return vote.verdict(sent.elapsed(), lease);
        }
        let mut rx = Fan::new(self.servers.iter().map(|s| {
            let (s, keys, args) = (s.clone(), op.keys(), args.clone());
            async move { s.eval(script, keys, args).await }
        }));
        while let Some((i, answer)) = rx.next().await {
            let reply = self.reply(i, answer);
            heard[i] = !matches!(reply, Reply::Failed(_));
            if vote.count(i, reply) {
                self.revoke(i, op.clone(), lease);
            }
            if vote.is_decided() {
                break;
            }
        }
        let verdict = vote.verdict(sent.elapsed(), lease);
        if let Verdict::Busy { revoke, .. } | Verdict::Failed { revoke, .. } = &verdict {
            for &i in revoke {
                self.revoke(i, op.clone(), lease);
            }
            let (inner, op) = (self.clone(), op.clone());
            rx.rest(move |i, answer| {
                if late_needs_revoke(&inner.reply(i, answer)) {
                    inner.revoke(i, op.clone(), lease);
                }
            });
        }
        // After a grant, late grants from the other servers stay: renewals and the release
        // cover every server.
        verdict
    }

    /// Server `i`'s answer to an acquire attempt, as the machine reads it.
    fn reply(&self, i: usize, answer: std::result::Result<Value, fred::error::Error>) -> Reply {
        let s = &self.servers[i];
        match answer {
            Ok(v) => Reply::parse(&v).unwrap_or_else(|| {
                let message = format!("{}: unexpected reply {}", s.label, show(&v));
                Reply::Failed(fault(message, false))
            }),
            Err(e) => Reply::Failed(fault(s.explain(&e), transient(&e) && !s.refused())),
        }
    }
}

/// What a timer's race tells the waiter: its time came, or the caller cancelled, or the
/// provider closed.
fn timer<T>(w: Waited<T>) -> Input {
    match w {
        Waited::Cancelled => Input::Cancelled,
        Waited::Closed => Input::Closed,
        Waited::Done(_) | Waited::TimedOut => Input::Elapsed,
    }
}
