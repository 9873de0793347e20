//! A semaphore of `maxCount` N: N slot files `<stem>.sem<i>`, a holder of k permits owning k of
//! them (all or nothing), and the semaphore's fencing counter in a file of its own. Owns the
//! per-name state of the slots in this process and what a held semaphore keeps.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_core::queue::Entry;
use distlock_core::sync::lock;
use distlock_core::{
    AcquireRequest, Backoff, Held, Input, Patience, Policy, Result, Step, Ticket, Waited, race,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::held::Hold;
use crate::names::{file_stem, semaphore_counter_file_name, slot_file_name};
use crate::os::{self, FileId, Mode};
use crate::{BACKEND, Inner, LOCK_CALL, MAX_REOPENS, fence, io_at, replaced_too_often};

/// How a semaphore acquire spends its budget once its in-process turn has come.
const POLICY: Policy = Policy {
    // Not used: this backend's failures are the OS's I/O errors, which end the acquire as they
    // are (`Error::Io`, with the errno, system call and path), never faults to ride out.
    fault_pause: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
    // Slots held by other processes cannot signal this one, so a busy semaphore is polled (a
    // slot this process frees wakes it at once): the first re-check after 1 ms, as a slot is
    // often freed within moments under contention, doubling to 50 ms, which bounds both the
    // delay a foreign release adds and the polling's cost (one open and lock per slot) to about
    // 20 scans a second.
    busy_poll: Some(Backoff::new(
        Duration::from_millis(1),
        Duration::from_millis(50),
    )),
    // Not used: no fault is transient here.
    try_retries: 0,
    // A try is one pass over the slot files, which never waits.
    try_budget: Duration::ZERO,
};

/// Per-name state of a semaphore in this process.
pub(crate) struct SemState {
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The slots this process holds.
    taken: Mutex<Vec<bool>>,
    /// Signalled when this process frees a slot.
    freed: Notify,
}

impl SemState {
    pub(crate) fn new(max_count: u32) -> Self {
        Self {
            gate: Arc::default(),
            taken: Mutex::new(vec![false; max_count as usize]),
            freed: Notify::new(),
        }
    }
}

/// What a held semaphore keeps: its slot files, then its in-process turn. Dropping it lets go of
/// the slots (and tells this process's waiters), then of the turn.
struct SlotsHold {
    files: Vec<(usize, File)>,
    _ticket: Ticket,
    entry: Arc<Entry<SemState>>,
}

impl Drop for SlotsHold {
    fn drop(&mut self) {
        let mut taken = lock(&self.entry.state.taken);
        for (slot, file) in self.files.drain(..) {
            drop(file);
            taken[slot] = false;
        }
        drop(taken);
        self.entry.state.freed.notify_waiters();
    }
}

impl Hold for SlotsHold {
    /// `None`: a semaphore holds several slot files.
    #[cfg(unix)]
    fn descriptor(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

impl Inner {
    /// Acquires `permits` slots of the semaphore `req.name`: the in-process turn, then every
    /// slot at once, polling while other processes hold too many.
    pub(crate) async fn acquire_slots(
        self: Arc<Self>,
        req: AcquireRequest,
        permits: u32,
        entry: Arc<Entry<SemState>>,
        mut ticket: Ticket,
        start: Instant,
    ) -> Result<Option<Held>> {
        let deadline = req.timeout.deadline(start);
        let cancel = req.cancel.as_ref();
        let gate = match self
            .turn(&req, &mut ticket, &entry.state.gate, deadline)
            .await
        {
            Ok(gate) => gate,
            Err(why) => return why.into_outcome(&req, BACKEND),
        };
        let stem = file_stem(&req.name);
        // The budget counts from the call, the in-process turn's wait included.
        let mut patience = Patience::new(POLICY, req.timeout, start);
        let mut step = patience.step(Input::Begin, Instant::now());
        let slots = loop {
            step = match step {
                Step::Attempt { .. } => {
                    // Listen for slots this process frees before scanning, so none is missed
                    // between the scan and the wait.
                    let freed = entry.state.freed.notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if let Some(found) = self.try_slots(&req, &stem, permits, &entry)? {
                        break found;
                    }
                    match patience.step(Input::Busy, Instant::now()) {
                        Step::Wait { until } => {
                            let input = match race(freed, until, cancel, self.core.closed()).await {
                                Waited::Done(()) => Input::Woken,
                                Waited::TimedOut => Input::Elapsed,
                                Waited::Cancelled => Input::Cancelled,
                                Waited::Closed => Input::Closed,
                            };
                            patience.step(input, Instant::now())
                        }
                        other => other,
                    }
                }
                Step::Done(end) => {
                    return end.into_result(&req, BACKEND, &self.dir.display().to_string());
                }
                // A pause follows only a fault, which this backend never feeds, and a wait only
                // the attempt above: re-check if either comes.
                Step::Pause { .. } | Step::Wait { .. } => {
                    patience.step(Input::Elapsed, Instant::now())
                }
            };
        };
        drop(gate);
        let mut watch = Vec::with_capacity(slots.len());
        let mut files = Vec::with_capacity(slots.len());
        for (slot, file, id) in slots {
            watch.push((self.dir.join(slot_file_name(&stem, slot as u32)), id));
            files.push((slot, file));
        }
        let state = Box::new(SlotsHold {
            files,
            _ticket: ticket,
            entry,
        });
        let token = match self.bump_semaphore_counter(&stem, &req).await {
            Ok(token) => token,
            Err(e) => {
                drop(state);
                return Err(e);
            }
        };
        self.register(&req, token, state, watch, start).map(Some)
    }

    /// One pass over the slots this process does not hold: `permits` free ones whose files are
    /// still in place, all or none (slots taken by a pass that finds too few are let go).
    fn try_slots(
        &self,
        req: &AcquireRequest,
        stem: &str,
        permits: u32,
        entry: &Entry<SemState>,
    ) -> Result<Option<Vec<(usize, File, FileId)>>> {
        let count = lock(&entry.state.taken).len();
        let mut found = Vec::with_capacity(permits as usize);
        let give_back = |found: Vec<(usize, File, FileId)>| {
            let mut taken = lock(&entry.state.taken);
            for (slot, file, _) in found {
                drop(file);
                taken[slot] = false;
            }
        };
        for slot in 0..count {
            if found.len() == permits as usize {
                break;
            }
            if lock(&entry.state.taken)[slot] {
                continue;
            }
            let path = self.dir.join(slot_file_name(stem, slot as u32));
            match self.try_slot(req, &path) {
                Ok(Some((file, id))) => {
                    lock(&entry.state.taken)[slot] = true;
                    found.push((slot, file, id));
                }
                Ok(None) => {}
                Err(e) => {
                    give_back(found);
                    return Err(e);
                }
            }
        }
        if found.len() == permits as usize {
            return Ok(Some(found));
        }
        give_back(found);
        Ok(None)
    }

    /// One non-waiting try on the slot file `path`: its file and identity if this call locked
    /// it and the path still names it, `None` when someone holds it.
    fn try_slot(&self, req: &AcquireRequest, path: &Path) -> Result<Option<(File, FileId)>> {
        for _ in 0..=MAX_REOPENS {
            let file = self.open(path)?;
            if !os::try_lock(&file, Mode::Exclusive).map_err(io_at(LOCK_CALL, path))? {
                return Ok(None);
            }
            if let Some(id) = os::still_named(&file, path).map_err(io_at("stat", path))? {
                return Ok(Some((file, id)));
            }
        }
        Err(replaced_too_often(req, path))
    }

    /// The semaphore's fencing counter lives in its own file, bumped under a short exclusive
    /// lock (holders of different slots run concurrently).
    async fn bump_semaphore_counter(&self, stem: &str, req: &AcquireRequest) -> Result<u64> {
        let file_name = semaphore_counter_file_name(stem);
        let path = self.dir.join(&file_name);
        let key = self.fence_key(&file_name);
        let mut file = self.open(&path)?;
        let mut reopens = 0;
        loop {
            if os::try_lock(&file, Mode::Exclusive).map_err(io_at(LOCK_CALL, &path))? {
                if os::still_named(&file, &path)
                    .map_err(io_at("stat", &path))?
                    .is_some()
                {
                    return fence::next_token(key, &file).map_err(io_at("write", &path));
                }
                // The counter file was deleted or replaced: bump the one the path names.
                reopens += 1;
                if reopens > MAX_REOPENS {
                    return Err(replaced_too_often(req, &path));
                }
                file = self.open(&path)?;
                continue;
            }
            // Another process is inside its few-microsecond bump; yield and retry.
            let retry = async { tokio::time::sleep(Duration::from_micros(200)).await };
            if let Err(why) = race(retry, None, req.cancel.as_ref(), self.core.closed())
                .await
                .done()
            {
                // Without a deadline only a cancel or a close ends this wait, and both are errors.
                why.into_outcome::<()>(req, BACKEND)?;
            }
        }
    }
}
