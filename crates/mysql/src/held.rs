//! A held lock: its share of the server (the session and the server lock names it holds) and
//! of this process (its turn in the in-process queue, a semaphore's claimed permit slots), and
//! how releasing, or the session ending, gives both back.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::sync::lock;
use distlock_core::turn::{self, Slots};
use distlock_core::{AcquireRequest, BoxFuture, Held, HeldCore, HeldLock, Result};
use tokio::time::Instant;

use crate::session::{Dependent, Session, Use};
use crate::statements::release_all;
use crate::{BACKEND, Inner};

/// A semaphore name's state in this process: its permit slots held or tried here.
pub(crate) type SemState = Slots;

/// A grant's share of this process (core's): its turn, a semaphore's permit slots.
pub(crate) type Turn = turn::Turn<(), SemState>;
pub(crate) type Keep = turn::Keep<(), SemState>;

impl Inner {
    /// Hands out the grant `got`, keeping `turn`.
    pub(crate) fn grant(
        self: &Arc<Self>,
        req: &AcquireRequest,
        got: Got,
        turn: Turn,
        start: Instant,
    ) -> Held {
        let id = self.core.held().next_id();
        let held = Arc::new(MyHeld {
            id,
            core: HeldCore::new(req.target(BACKEND).to_string(), got.token),
            grant: Mutex::new(Some(Grant {
                session: got.session.clone(),
                names: got.names,
                turn,
            })),
            op_timeout: self.op_timeout(),
            runtime: tokio::runtime::Handle::current(),
            owner: Arc::downgrade(self),
        });
        self.core.held().insert(id, &held);
        let dependent: Arc<dyn Dependent> = held.clone();
        got.session.hold(id, Arc::downgrade(&dependent));
        // Only now may the session serve a wait again, or be shared.
        if got.shared.is_none() {
            got.session.end_wait();
        }
        drop(got.shared);
        tracing::debug!(
            backend = BACKEND,
            token = got.token,
            waited_ms = start.elapsed().as_millis() as u64,
            "granted"
        );
        held
    }
}

/// What an acquire round won: its session and the server lock names it holds there.
pub(crate) struct Got {
    pub(crate) session: Arc<Session>,
    /// The caller's use of a shared session, kept until the hold is registered (else the
    /// session could be picked for a wait in between).
    pub(crate) shared: Option<Use>,
    pub(crate) names: Vec<String>,
    /// A semaphore's permit slots, and their claims in this process until the grant keeps them.
    pub(crate) slots: Vec<u32>,
    pub(crate) claims: Option<Claims>,
    pub(crate) token: u64,
}

impl Got {
    pub(crate) fn new(
        session: Arc<Session>,
        shared: Option<Use>,
        names: Vec<String>,
        token: u64,
    ) -> Self {
        Self {
            session,
            shared,
            names,
            slots: Vec::new(),
            claims: None,
            token,
        }
    }
}

/// Permit slots claimed in this process by one attempt; unclaimed on drop unless kept. An
/// abandoned attempt keeps its claims until it has run to its end and given back what it won.
pub(crate) struct Claims {
    entry: Arc<Entry<SemState>>,
    mine: Mutex<Vec<u32>>,
    kept: bool,
}

impl Claims {
    pub(crate) fn new(entry: Arc<Entry<SemState>>) -> Self {
        Self {
            entry,
            mine: Mutex::new(Vec::new()),
            kept: false,
        }
    }

    pub(crate) fn claim(&self, slot: u32) -> bool {
        let fresh = self.entry.state.claim(slot);
        if fresh {
            lock(&self.mine).push(slot);
        }
        fresh
    }

    pub(crate) fn unclaim(&self, slot: u32) {
        lock(&self.mine).retain(|&s| s != slot);
        self.entry.state.unclaim(slot);
    }

    /// The claims now belong to a grant (its turn unclaims them on release).
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mine = std::mem::take(&mut *lock(&self.mine));
        if mine.is_empty() {
            // Nothing was given back: waking this name's waiters (this attempt's own among
            // them) would only send them to try again at once.
            return;
        }
        self.entry.state.give_back(&mine);
    }
}

struct Grant {
    session: Arc<Session>,
    names: Vec<String>,
    turn: Turn,
}

pub(crate) struct MyHeld {
    id: u64,
    pub(crate) core: HeldCore,
    grant: Mutex<Option<Grant>>,
    op_timeout: Duration,
    runtime: tokio::runtime::Handle,
    owner: Weak<Inner>,
}

impl MyHeld {
    /// Takes the grant (once) and returns the future that releases it on the server (within
    /// `op_timeout`, else the session is closed), then lets the next caller of this process in.
    pub(crate) fn take_and_release(&self) -> impl Future<Output = ()> + Send + use<> {
        let grant = lock(&self.grant).take();
        self.core.mark_released();
        if let Some(owner) = self.owner.upgrade() {
            owner.core.held().remove(self.id);
        }
        let (id, op) = (self.id, self.op_timeout);
        async move {
            let Some(grant) = grant else { return };
            let s = grant.session;
            if !s.is_dead() {
                // A failure ends the session, which frees the lock on the server.
                let _ = s.run(Some(op), release_all(grant.names)).await;
            }
            s.forget(id);
            drop(grant.turn);
        }
    }
}

impl Dependent for MyHeld {
    fn session_ended(&self, reason: &str) {
        let grant = lock(&self.grant).take();
        if grant.is_some() {
            self.core.lost().fire(reason);
            if let Some(owner) = self.owner.upgrade() {
                owner.core.held().remove(self.id);
            }
        }
        drop(grant);
    }
}

impl HeldLock for MyHeld {
    fn core(&self) -> &HeldCore {
        &self.core
    }

    fn release(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        let releasing = self.take_and_release();
        Box::pin(async move {
            releasing.await;
            Ok(())
        })
    }
}

impl Drop for MyHeld {
    fn drop(&mut self) {
        if lock(&self.grant).is_some() {
            // Dropped without release (a garbage-collected handle): release in the background.
            let releasing = self.take_and_release();
            self.runtime.spawn(releasing);
        }
    }
}
