//! One acquire in etcd: the driver of its [`Place`] under core patience. Each attempt makes
//! sure the acquire has a live lease, sends its place's transaction and judges the answer; a
//! busy lock is waited on through a watch on what it waits for, which wakes the next attempt.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::{
    AcquireRequest, Admitted, Attempted, End, Fault, Held, Patience, Policy, Reporter, Result,
    Timeout, drive, wait_turn,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{at, fault, no_answer};
use crate::grpc::wire::{WatchRequest, WatchResponse};
use crate::grpc::{self, Client, Stream};
use crate::order::{self, Heard, Place, Verdict, Watch};
use crate::pool::FAULT_PAUSE;
use crate::session::Session;
use crate::{BACKEND, Inner, Plan};

/// How an acquire spends its budget once its in-process turn has come.
const POLICY: Policy = Policy {
    // The same failures as one request rides out within its bound (see there).
    fault_pause: FAULT_PAUSE,
    // A busy lock is woken by its watch (the key it waits for is deleted), never polled.
    busy_poll: None,
    // The pool already retries a try's request on the next endpoint within its bound.
    try_retries: 0,
    // Replaced by `opTimeoutMs`: a try's connect, lease, transaction and give-up.
    try_budget: Duration::ZERO,
};

/// One acquire's state between its attempts.
pub(crate) struct Waiter {
    place: Place,
    session: Option<Arc<Session>>,
    /// What it waits on after an attempt found the lock busy.
    watching: Option<Watching>,
    /// A failure the watch met, which the next attempt reports.
    fault: Option<Fault>,
}

/// A watch in place, with what reading it needs.
struct Watching {
    ci: usize,
    client: Client,
    session: Arc<Session>,
    stream: Stream<WatchRequest, WatchResponse>,
    watch: Watch,
}

impl Waiter {
    pub fn new(place: Place) -> Self {
        Self {
            place,
            session: None,
            watching: None,
            fault: None,
        }
    }
}

impl Inner {
    pub(crate) async fn acquire(
        self: Arc<Self>,
        req: AcquireRequest,
        plan: Plan,
        w: Waiter,
        admitted: Admitted<()>,
    ) -> Result<Option<Held>> {
        let Admitted { entry, mut ticket } = admitted;
        let _ = self.runtime.get_or_init(tokio::runtime::Handle::current);
        let start = Instant::now();
        let deadline = req.timeout.deadline(start);
        let cancel = req.cancel.as_ref();
        if !ticket.is_granted()
            && let Err(why) = wait_turn(&req, &mut ticket, deadline, self.core.closed()).await
        {
            return why.into_outcome(&req, BACKEND);
        }
        let once = req.timeout == Timeout::Zero;
        let policy = Policy {
            try_budget: self.opts.op_timeout,
            ..POLICY
        };
        // The budget counts from the call, the in-process turn's wait included.
        let reporter = Reporter::of(self.observer.get(), &req, BACKEND);
        let patience = Patience::new(policy, req.timeout, start).reporting(reporter);
        let bound = patience.deadline();
        let waiter = Mutex::new(w);
        let outcome = drive(
            patience,
            cancel,
            self.core.closed(),
            |_| self.attempt(&waiter, plan, once),
            || self.woken(&waiter),
        )
        .await;
        let mut w = waiter.into_inner();
        w.watching = None;
        let waited_us = start.elapsed().as_micros() as u64;
        let result = match outcome {
            Ok(rev) => match w.session.take().zip(w.place.into_grant()) {
                Some((session, (key, _))) => {
                    let held = self.grant(&req, plan, session, key, rev, entry, ticket);
                    tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, token = rev, waited_us, "acquired");
                    return Ok(Some(held));
                }
                // Not reached: a granted waiter has both.
                None => Err(self.fault_error(
                    "acquiring",
                    &req.target(BACKEND),
                    Fault::transient("internal error: granted without a key"),
                )),
            },
            Err(End::Busy) if once => {
                // Within what is left of the try's budget; a delete that needs longer goes on
                // in the background.
                let left = bound.map_or(self.opts.op_timeout, |b| {
                    b.saturating_duration_since(Instant::now())
                });
                self.give_up(w, left).await;
                Ok(None)
            }
            Err(end) => {
                let out = self.ended(end, &req);
                self.forget_key(&mut w);
                out
            }
        };
        let outcome = match &result {
            Ok(_) => "busy",
            Err(e) => e.code(),
        };
        tracing::debug!(backend = BACKEND, name = %req.name, kind = ?req.kind, outcome, waited_us, "not acquired");
        result
    }

    /// What an acquire that ended without a grant returns. A fault that ends it names the lock
    /// and the endpoint, as every etcd error does.
    fn ended(&self, end: End, req: &AcquireRequest) -> Result<Option<Held>> {
        let end = match end {
            End::Failed(f) => End::Failed(self.named("acquiring", &req.target(BACKEND), f)),
            other => other,
        };
        end.into_result(req, BACKEND, &self.label)
    }

    /// One attempt: the fault the watch met, if any; else one [`Inner::step`].
    async fn attempt(&self, waiter: &Mutex<Waiter>, plan: Plan, once: bool) -> Attempted<i64> {
        let mut w = waiter.lock().await;
        w.watching = None;
        if let Some(f) = w.fault.take() {
            return Attempted::Fault(f);
        }
        match self.step(&mut w, plan, once).await {
            Ok(attempted) => attempted,
            Err(f) => {
                tracing::debug!(backend = BACKEND, error = %f.message, transient = f.transient, "attempt failed");
                Attempted::Fault(f)
            }
        }
    }

    /// Make sure the waiter has a live lease, send its place's transaction, and judge the
    /// answer; if it must wait, put the watch in place for [`Inner::woken`].
    async fn step(
        &self,
        w: &mut Waiter,
        plan: Plan,
        once: bool,
    ) -> std::result::Result<Attempted<i64>, Fault> {
        let bound = self.opts.op_timeout;
        let session = match &w.session {
            Some(s) if s.is_live() => s.clone(),
            _ => {
                // The lease is gone (or there was none yet): so is the key, if there was one.
                self.forget_key(w);
                let s = self.session_for(plan).await?;
                w.session = Some(s.clone());
                s
            }
        };
        let (ci, c) = self.pool.client().await?;
        let txn = w.place.txn(session.id);
        let answer = self.request(ci, &session, bound, c.txn(txn)).await?;
        let watch = match w.place.judge(answer, session.id) {
            Verdict::Granted(rev) => return Ok(Attempted::Granted(rev)),
            Verdict::Busy(_) if once => return Ok(Attempted::Busy),
            Verdict::Busy(None) | Verdict::Again => return Ok(Attempted::Answered),
            Verdict::Busy(Some(watch)) => watch,
        };
        let stream = self
            .request(ci, &session, bound, c.watch(watch.create.clone()))
            .await?;
        w.watching = Some(Watching {
            ci,
            client: c,
            session,
            stream,
            watch,
        });
        Ok(Attempted::Busy)
    }

    /// Completes when something the waiter waits for may be gone (or its lease is lost), or
    /// the watch failed (kept for the next attempt to report).
    async fn woken(&self, waiter: &Mutex<Waiter>) {
        let mut w = waiter.lock().await;
        let Some(mut watching) = w.watching.take() else {
            return;
        };
        if let Err(f) = self.read_watch(&mut watching).await {
            w.fault = Some(f);
        }
    }

    async fn read_watch(&self, wg: &mut Watching) -> std::result::Result<(), Fault> {
        let bound = self.opts.op_timeout;
        loop {
            tokio::select! {
                m = wg.stream.message() => match m {
                    Ok(Some(resp)) => match order::heard(&resp, &wg.watch) {
                        Heard::Again => return Ok(()),
                        Heard::Nothing => {}
                        Heard::Look => {
                            let look = wg.watch.look.clone().unwrap_or_default();
                            let asking = wg.client.range(look);
                            let found = self.request(wg.ci, &wg.session, bound, asking).await?;
                            if found.count == 0 {
                                return Ok(());
                            }
                        }
                        Heard::Failed(f) => {
                            self.pool.failed(wg.ci);
                            return Err(f);
                        }
                    },
                    Ok(None) => {
                        self.pool.failed(wg.ci);
                        return Err(Fault::transient("the watch stream ended"));
                    }
                    Err(e) => {
                        self.pool.failed(wg.ci);
                        return Err(fault(&e));
                    }
                },
                _ = wg.session.lost.lost() => return Ok(()),
            }
        }
    }

    /// Runs one request within `bound`; a "lease not found" answer marks `session` lost.
    async fn request<T>(
        &self,
        ci: usize,
        session: &Session,
        bound: Duration,
        fut: impl std::future::Future<Output = std::result::Result<T, grpc::Error>>,
    ) -> std::result::Result<T, Fault> {
        match tokio::time::timeout(bound, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let f = at(fault(&e), self.pool.endpoint(ci));
                if f.message.contains("lease not found") {
                    session
                        .lost
                        .fire("etcd reports its lease gone (expired or revoked)");
                    return Err(Fault {
                        transient: true,
                        ..f
                    });
                }
                if f.transient {
                    self.pool.failed(ci);
                }
                Err(f)
            }
            Err(_) => {
                self.pool.failed(ci);
                Err(at(no_answer(bound), self.pool.endpoint(ci)))
            }
        }
    }

    /// Drops the waiter's key (deleted in the background; it may exist) and its own lease.
    fn forget_key(&self, w: &mut Waiter) {
        if let Some(key) = w.place.forget() {
            self.delete_later(key);
        }
        if let Some(s) = w.session.take()
            && !s.shared
        {
            self.revoke_later(s);
        }
    }

    /// A waiter that gave up: its key goes now (its own lease with it), within `bound`.
    async fn give_up(&self, mut w: Waiter, bound: Duration) {
        match w.session.take() {
            Some(s) if !s.shared => {
                // Finished in the background if it needs longer than `bound`.
                let (pool, op) = (self.pool.clone(), self.opts.op_timeout);
                let revoking = tokio::spawn(async move { s.revoke(&pool, op).await });
                let _ = tokio::time::timeout(bound, revoking).await;
            }
            _ => {
                if let Some(key) = w.place.forget() {
                    crate::cleanup::delete(&self.pool, bound, key).await;
                }
            }
        }
    }
}
