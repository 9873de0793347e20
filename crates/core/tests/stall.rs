//! The stall report of a wait with no timeout (`distlock_core::stall`), through the public
//! patience machine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_core::stall::{Reporter, STALL_AFTER};
use distlock_core::{
    BackendEvent, Backoff, Fault, Input, Observer, Patience, Policy, Step, Timeout,
};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn policy(busy_poll: Option<Backoff>) -> Policy {
    Policy {
        fault_pause: Backoff::new(50 * MS, 1000 * MS),
        busy_poll,
        try_retries: 1,
        try_budget: 300 * MS,
    }
}

fn at(t0: Instant, ms: u32) -> Instant {
    t0 + ms * MS
}

fn lost() -> Fault {
    Fault::transient("the connection was reset")
}

#[test]
fn a_wait_with_no_timeout_says_so_when_its_store_stays_unreachable() {
    let heard: Arc<Mutex<Vec<BackendEvent>>> = Arc::default();
    let sink = heard.clone();
    let observer: Observer = Arc::new(move |e| sink.lock().unwrap().push(e));
    let reporter = Reporter::new(observer, "redis lock \"orders\"");
    let t0 = Instant::now();
    let mut p = Patience::new(policy(None), Timeout::Forever, t0).reporting(Some(reporter.clone()));
    p.step(Input::Begin, t0);
    // A fault a second for 40 s: a report at 5 s, another 30 s later.
    for s in 0..=40u32 {
        assert!(matches!(
            p.step(Input::Fault(lost()), at(t0, s * 1000)),
            Step::Pause { .. }
        ));
    }
    let events = heard.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    let BackendEvent::Stalled {
        lock,
        waited,
        detail,
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!(lock, "redis lock \"orders\"");
    assert_eq!(*waited, STALL_AFTER);
    assert_eq!(detail, "the connection was reset");
    // An answer clears it: the next report needs another 5 s of trouble.
    p.step(Input::Busy, at(t0, 41_000));
    p.step(Input::Fault(lost()), at(t0, 42_000));
    p.step(Input::Fault(lost()), at(t0, 46_000));
    assert_eq!(heard.lock().unwrap().len(), 2);
    p.step(Input::Fault(lost()), at(t0, 47_000));
    assert_eq!(heard.lock().unwrap().len(), 3);
    // With a timeout, the deadline's error says it; nothing is reported.
    let mut q =
        Patience::new(policy(None), Timeout::After(60_000 * MS), t0).reporting(Some(reporter));
    q.step(Input::Begin, t0);
    for s in 0..=20u32 {
        q.step(Input::Fault(lost()), at(t0, s * 1000));
    }
    assert_eq!(heard.lock().unwrap().len(), 3);
}
