//! The async driver of [`Patience`]: runs a backend's attempts and wake-ups under the machine's
//! steps, racing each against the caller's cancel and the provider's close.
//!
//! A backend gives two things: `attempt(until)`, one try at the lock that answers with an
//! [`Attempted`], and `woken()`, a future that completes when a busy lock may have come free
//! (a release seen on pub/sub, a watch event, a permit given back in this process), or never,
//! for a backend whose server queues the waiter itself. An attempt still running when its bound
//! passes, or when the caller cancels, is dropped: a backend whose attempt leaves state on the
//! server (a queued key, a granted lock whose answer was not read) undoes it on drop.

use std::future::Future;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Waited, race};
use crate::fault::Fault;
use crate::patience::{End, Input, Patience, Step};

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempted<T> {
    /// The lock is ours.
    Granted(T),
    /// Someone else holds it.
    Busy,
    /// The store answered without a decision: attempt again at once.
    Answered,
    /// It failed.
    Fault(Fault),
}

/// Runs `patience` to its end: the granted value, or how the acquire ended without one (turn it
/// into the user's result with [`End::into_result`]).
pub async fn drive<T, A, AF, W, WF>(
    mut patience: Patience,
    cancel: Option<&CancellationToken>,
    closed: &CancellationToken,
    mut attempt: A,
    mut woken: W,
) -> Result<T, End>
where
    A: FnMut(Option<Instant>) -> AF,
    AF: Future<Output = Attempted<T>>,
    W: FnMut() -> WF,
    WF: Future<Output = ()>,
{
    let mut step = patience.step(Input::Begin, Instant::now());
    loop {
        let input = match step {
            Step::Done(end) => return Err(end),
            Step::Attempt { until } => match race(attempt(until), until, cancel, closed).await {
                Waited::Done(Attempted::Granted(v)) => return Ok(v),
                Waited::Done(Attempted::Busy) => Input::Busy,
                Waited::Done(Attempted::Answered) => Input::Answered,
                Waited::Done(Attempted::Fault(f)) => Input::Fault(f),
                other => interrupted(other),
            },
            Step::Pause { until } => {
                let sleep = tokio::time::sleep_until(until);
                match race(sleep, None, cancel, closed).await {
                    Waited::Done(()) => Input::Elapsed,
                    other => interrupted(other),
                }
            }
            Step::Wait { until } => match race(woken(), until, cancel, closed).await {
                Waited::Done(()) => Input::Woken,
                other => interrupted(other),
            },
        };
        step = patience.step(input, Instant::now());
    }
}

fn interrupted<T>(w: Waited<T>) -> Input {
    match w {
        Waited::Done(_) | Waited::TimedOut => Input::Elapsed,
        Waited::Cancelled => Input::Cancelled,
        Waited::Closed => Input::Closed,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::options::Timeout;
    use crate::patience::{Backoff, Policy};

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Policy {
        Policy {
            fault_pause: Backoff::new(50 * MS, 1000 * MS),
            busy_poll: None,
            try_retries: 0,
            try_budget: 300 * MS,
        }
    }

    /// Answers attempts from `script` in order (busy once the script runs out), recording when
    /// each began.
    async fn run(
        timeout: Timeout,
        script: Vec<Attempted<u32>>,
        wake_after: Option<Duration>,
        cancel: Option<&CancellationToken>,
    ) -> (Result<u32, End>, Vec<u128>) {
        let t0 = Instant::now();
        let script = Mutex::new(VecDeque::from(script));
        let times = Mutex::new(vec![]);
        let out = drive(
            Patience::new(policy(), timeout, t0),
            cancel,
            &CancellationToken::new(),
            |_| {
                times
                    .lock()
                    .unwrap()
                    .push((Instant::now() - t0).as_millis());
                let next = script.lock().unwrap().pop_front();
                async move { next.unwrap_or(Attempted::Busy) }
            },
            || async move {
                match wake_after {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            },
        )
        .await;
        (out, times.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn rides_out_faults_then_is_woken_into_a_grant() {
        let lost = || Attempted::Fault(Fault::transient("reset"));
        let script = vec![lost(), lost(), Attempted::Busy, Attempted::Granted(7)];
        let (out, times) = run(Timeout::Forever, script, Some(30 * MS), None).await;
        assert_eq!(out.unwrap(), 7);
        // Pauses of 50 and 100 ms after the faults, then the 30 ms wake-up after "busy".
        assert_eq!(times, vec![0, 50, 150, 180]);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_busy_at_the_deadline_when_nothing_wakes_it() {
        let (out, times) = run(Timeout::After(200 * MS), vec![], None, None).await;
        assert_eq!(out.unwrap_err(), End::Busy);
        assert_eq!(times, vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_never_answers_is_cut_at_the_deadline_as_trouble() {
        let t0 = Instant::now();
        let out: Result<(), End> = drive(
            Patience::new(policy(), Timeout::After(120 * MS), t0),
            None,
            &CancellationToken::new(),
            |_| std::future::pending(),
            std::future::pending,
        )
        .await;
        assert_eq!(
            out.unwrap_err(),
            End::Unreachable {
                fault: None,
                waited: 120 * MS
            }
        );
        assert_eq!(Instant::now() - t0, 120 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_during_a_pause_ends_it_at_once() {
        let token = CancellationToken::new();
        let fire = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(10 * MS).await;
            fire.cancel();
        });
        let t0 = Instant::now();
        let lost = Attempted::Fault(Fault::transient("reset"));
        let (out, _) = run(Timeout::Forever, vec![lost], None, Some(&token)).await;
        assert_eq!(out.unwrap_err(), End::Cancelled);
        assert_eq!(Instant::now() - t0, 10 * MS);
    }
}
