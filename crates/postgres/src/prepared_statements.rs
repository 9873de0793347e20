//! The hot path's statements on a real server (`DISTLOCK_TEST_PG_URL`, else the local server on
//! 127.0.0.1:5432), read back from the provider's own sessions: what `pg_prepared_statements`
//! shows there is invisible from any other connection.

use std::sync::Arc;
use std::time::Duration;

use distlock_core::{AcquireRequest, Backend, Held, LockKind, Timeout};
use tokio::time::Instant;

use crate::session::Session;
use crate::sql::Sql;
use crate::{AdvisoryKey, PgOptions, PostgresBackend, Scope, config};

fn url(app: &str) -> String {
    let base = std::env::var("DISTLOCK_TEST_PG_URL")
        .unwrap_or_else(|_| String::from("postgres://postgres@127.0.0.1:5432/postgres"));
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}application_name={app}")
}

fn provider(app: &str, scope: Scope, max_connections: f64) -> PostgresBackend {
    let opts = PgOptions::parse(&url(app))
        .unwrap()
        .max_connections(max_connections)
        .unwrap()
        .scope(scope);
    PostgresBackend::new(opts).unwrap()
}

fn req(name: &str, kind: LockKind, timeout_ms: f64) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        kind,
        timeout: Timeout::from_ms(Some(timeout_ms)).unwrap(),
        cancel: None,
        lease: None,
        auto_renew: true,
    }
}

fn tag(what: &str) -> String {
    format!("dlprep_{what}_{}", std::process::id())
}

/// The provider's only session.
fn session(b: &PostgresBackend) -> Arc<Session> {
    let sessions = b.inner.pool.sessions();
    assert_eq!(sessions.len(), 1, "expected one session");
    sessions[0].clone()
}

/// The statements prepared on the extended protocol on `s` (`PREPARE` in SQL is not used),
/// with how often each was executed.
async fn prepared_on(s: &Session) -> Vec<(String, i64)> {
    let rows = s
        .query(
            "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements \
             WHERE NOT from_sql ORDER BY statement",
        )
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| {
            let text = r[0].clone().unwrap();
            let runs = r[1].as_deref().unwrap().parse().unwrap();
            (text, runs)
        })
        .collect()
}

/// Acquires every request at once (each a try that must be granted), then releases all at
/// once.
async fn take_and_release_concurrently(b: &PostgresBackend, reqs: Vec<AcquireRequest>) {
    let mut tries = tokio::task::JoinSet::new();
    for r in reqs {
        tries.spawn(b.acquire(r).unwrap());
    }
    let held: Vec<Held> = tries
        .join_all()
        .await
        .into_iter()
        .map(|h| h.unwrap().expect("a free lock was busy"))
        .collect();
    let mut releases = tokio::task::JoinSet::new();
    for h in held {
        releases.spawn(h.release());
    }
    for r in releases.join_all().await {
        r.unwrap();
    }
}

#[tokio::test]
async fn session_scope_prepares_each_statement_once_per_session_and_reuses_it() {
    const N: usize = 6;
    let seq = config::DEFAULT_SEQUENCE;
    // One connection: every try and unlock, sent concurrently, shares one session.
    let b = provider(&tag("session"), Scope::Session, 1.0);
    let long = |i: usize| format!("{}-mutex-{i}", tag("session")); // hashed: a bigint key
    let short = |i: usize| format!("p{:08x}", std::process::id() * 16 + i as u32); // a pair
    let mut reqs = Vec::new();
    for i in 0..N {
        reqs.push(req(&long(i), LockKind::Mutex, 0.0));
        reqs.push(req(&short(i), LockKind::Read, 0.0));
    }
    take_and_release_concurrently(&b, reqs).await;
    let s = session(&b);
    let sql = |key, shared| Sql {
        key,
        shared,
        scope: Scope::Session,
    };
    let bigint = sql(AdvisoryKey::from_name(&long(0)), false);
    let pair = sql(AdvisoryKey::from_name(&short(0)), true);
    assert!(matches!(bigint.key, AdvisoryKey::Bigint(_)));
    assert!(matches!(pair.key, AdvisoryKey::Pair(..)));
    // Each text once, with how often it ran.
    let expected = |bigint_runs: usize, pair_runs: usize| {
        let mut all = vec![
            (bigint.attempt(seq).text, bigint_runs as i64),
            (bigint.unlock().text, bigint_runs as i64),
            (pair.attempt(seq).text, pair_runs as i64),
            (pair.unlock().text, pair_runs as i64),
        ];
        all.sort();
        all
    };
    assert_eq!(prepared_on(&s).await, expected(N, N));
    for (text, _) in expected(N, N) {
        assert!(text.contains("$1::int"), "not parameterized: {text}");
    }

    // Again on the same session: the same statements run again, none is prepared anew.
    let reqs = (0..N)
        .map(|i| req(&long(i), LockKind::Mutex, 0.0))
        .collect();
    take_and_release_concurrently(&b, reqs).await;
    let again = expected(2 * N, N);
    assert_eq!(prepared_on(&session(&b)).await, again);
    b.close().await.unwrap();
}

#[tokio::test]
async fn session_scope_waits_and_semaphores_use_prepared_statements() {
    let seq = config::DEFAULT_SEQUENCE;
    let name = format!("{}-busy", tag("wait"));
    let holder = provider(&tag("holder"), Scope::Session, 1.0);
    let held = holder
        .acquire(req(&name, LockKind::Mutex, 0.0))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    // The waiter's try finds the lock busy, then it blocks on the same (empty) session until
    // the server's lock_timeout ends the wait (55P03: "busy").
    let waiter = provider(&tag("waiter"), Scope::Session, 1.0);
    for _ in 0..2 {
        let start = Instant::now();
        let got = waiter
            .acquire(req(&name, LockKind::Mutex, 150.0))
            .unwrap()
            .await
            .unwrap();
        assert!(got.is_none());
        assert!(start.elapsed() >= Duration::from_millis(150));
    }
    let sem = format!("{}-sem", tag("wait"));
    for _ in 0..3 {
        let permit = waiter
            .acquire(req(&sem, LockKind::semaphore(3), 0.0))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        permit.release().await.unwrap();
    }
    let sql = Sql {
        key: AdvisoryKey::from_name(&name),
        shared: false,
        scope: Scope::Session,
    };
    let prepared = prepared_on(&session(&waiter)).await;
    let runs = |text: &str| {
        let found: Vec<i64> = prepared
            .iter()
            .filter(|(t, _)| t == text)
            .map(|(_, runs)| *runs)
            .collect();
        assert_eq!(found.len(), 1, "{text} in {prepared:#?}");
        found[0]
    };
    assert_eq!(runs(&sql.attempt(seq).text), 2);
    assert_eq!(runs(&sql.wait(seq, true).text), 2);
    let sem_try = prepared
        .iter()
        .find(|(t, _)| t.contains("unnest($1::int8[], $2::int8[])"))
        .unwrap_or_else(|| panic!("no semaphore attempt in {prepared:#?}"));
    assert_eq!(sem_try.1, 3);
    assert_eq!(
        runs("SELECT pg_advisory_unlock(k) FROM unnest($1::int8[]) AS k"),
        3
    );
    held.release().await.unwrap();
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
}

#[tokio::test]
async fn transaction_scope_binds_its_values_and_keeps_no_named_statements() {
    let app = tag("xact");
    let b = provider(&app, Scope::Transaction, 1.0);
    let name = format!("{app}-lock");
    let held = b
        .acquire(req(&name, LockKind::Mutex, 0.0))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let (admin, conn) = tokio_postgres::connect(&url("dlprep_admin"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The session holds the lock idle in its transaction; its last statement is the attempt,
    // with the key as a parameter (the simple protocol would show "BEGIN; SELECT ..." with
    // the key spelled out).
    let row = admin
        .query_one(
            "SELECT state, query FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    let (state, query): (String, String) = (row.get(0), row.get(1));
    assert_eq!(state, "idle in transaction");
    let sql = Sql {
        key: AdvisoryKey::from_name(&name),
        shared: false,
        scope: Scope::Transaction,
    };
    assert_eq!(query, sql.attempt(config::DEFAULT_SEQUENCE).text);
    assert!(query.contains("pg_try_advisory_xact_lock($1::int8)"));
    assert!(prepared_on(&session(&b)).await.is_empty());

    // A wait that the server's lock_timeout ends (55P03) leaves the waiter's transaction
    // aborted; the unnamed ROLLBACK that cleans it up keeps the session usable.
    let waiter = provider(&tag("xact_waiter"), Scope::Transaction, 1.0);
    let got = waiter
        .acquire(req(&name, LockKind::Mutex, 150.0))
        .unwrap()
        .await
        .unwrap();
    assert!(got.is_none());
    let first = session(&waiter);
    let other = waiter
        .acquire(req(&format!("{app}-other"), LockKind::Mutex, 2_000.0))
        .unwrap()
        .await
        .unwrap()
        .expect("a free lock was busy");
    let again = session(&waiter);
    assert!(
        Arc::ptr_eq(&first, &again) && !again.is_dead(),
        "the session was replaced after the wait"
    );
    other.release().await.unwrap();
    held.release().await.unwrap();
    waiter.close().await.unwrap();
    b.close().await.unwrap();
}
