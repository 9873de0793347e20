//! The statements of the MySQL backend, each an [`Op`] run on one session: the tries (one lock,
//! a batch of semaphore permits), the blocking wait, the releases, the fencing counter and
//! `UUID_SHORT()`, `KILL CONNECTION` and the probe; and the server lock names they use.

use mysql_async::prelude::Queryable;

use crate::names;
use crate::session::Op;

/// What `GET_LOCK` waits without a timeout: the most seconds the servers accept (as .NET
/// DistributedLock sends).
pub(crate) const FOREVER_SECS: u64 = 0xFFFF_FFFF;

/// The server lock name of permit `slot` of semaphore `name` (always hashed: the uppercase
/// keeps it apart from the names of locks).
pub(crate) fn slot_name(name: &str, slot: u32) -> String {
    names::lock_name(&format!("DISTLOCK-SEMAPHORE:{slot}:{name}"))
}

/// The fencing counter's row of semaphore `name`.
pub(crate) fn semaphore_fence(name: &str) -> String {
    names::lock_name(&format!("DISTLOCK-SEMAPHORE:{name}"))
}

/// `?, ?, …` with `n` placeholders of `each`.
pub(crate) fn list(each: &str, n: usize) -> String {
    vec![each; n].join(", ")
}

/// The statement that takes `names` if free, never waiting: one 0/1 cell per name.
pub(crate) fn try_all(names: Vec<String>) -> Op<Vec<bool>> {
    Box::new(move |c| {
        Box::pin(async move {
            let sql = format!("SELECT {}", list("GET_LOCK(?, 0)", names.len()));
            let row: Option<mysql_async::Row> = c.exec_first(sql, names).await?;
            let row = row.map(|r| r.unwrap()).unwrap_or_default();
            Ok(row
                .into_iter()
                .map(|v| matches!(v, mysql_async::Value::Int(1) | mysql_async::Value::UInt(1)))
                .collect())
        })
    })
}

/// The statement that releases `names` (a name not held is ignored by the server).
pub(crate) fn release_all(names: Vec<String>) -> Op<()> {
    Box::new(move |c| {
        Box::pin(async move {
            let sql = format!("DO {}", list("RELEASE_LOCK(?)", names.len()));
            c.exec_drop(sql, names).await
        })
    })
}

/// The statement that bumps the fencing counter of `row` in `table`; returns the new token.
pub(crate) fn bump(table: &str, row: String) -> Op<Option<u64>> {
    let sql = format!(
        "INSERT INTO {table} (name, token) VALUES (?, LAST_INSERT_ID(1)) \
         ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)"
    );
    Box::new(move |c| {
        Box::pin(async move {
            c.exec_drop(sql, (row,)).await?;
            Ok(c.last_insert_id())
        })
    })
}

/// A try that takes the lock `name` and bumps its fencing counter in one statement: the
/// counter's row is written only when `GET_LOCK` granted. `None` when busy.
pub(crate) fn try_and_bump(table: &str, name: String) -> Op<Option<u64>> {
    let sql = format!(
        "INSERT INTO {table} (name, token) SELECT ?, LAST_INSERT_ID(1) FROM DUAL \
         WHERE GET_LOCK(?, 0) = 1 ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)"
    );
    Box::new(move |c| {
        Box::pin(async move {
            c.exec_drop(sql, (name.clone(), name)).await?;
            Ok(if c.affected_rows() == 0 {
                None
            } else {
                c.last_insert_id()
            })
        })
    })
}

/// What a blocking wait answers: `GET_LOCK`'s result and the `UUID_SHORT()` read after it.
pub(crate) type WaitAnswer = (Option<i64>, Option<u64>);

/// The blocking wait for `name`, up to `secs` seconds: `Some(1)` granted, `Some(0)` the
/// server's timeout, `None` killed; with the server's `UUID_SHORT()` read after it.
pub(crate) fn wait_for(name: String, secs: u64) -> Op<WaitAnswer> {
    Box::new(move |c| {
        Box::pin(async move {
            let row: Option<(Option<i64>, Option<u64>)> = c
                .exec_first("SELECT GET_LOCK(?, ?), UUID_SHORT()", (name, secs))
                .await?;
            Ok(row.unwrap_or((None, None)))
        })
    })
}

/// A try that takes `name` and reads `UUID_SHORT()` in one statement (no write): `None` when
/// busy.
pub(crate) fn try_with_uuid(name: String) -> Op<Option<u64>> {
    Box::new(move |c| {
        Box::pin(async move {
            let row: Option<(Option<i64>, Option<u64>)> = c
                .exec_first("SELECT GET_LOCK(?, 0), UUID_SHORT()", (name,))
                .await?;
            Ok(match row {
                Some((Some(1), token)) => token,
                _ => None,
            })
        })
    })
}

/// The server's next `UUID_SHORT()`.
pub(crate) fn uuid_short() -> Op<Option<u64>> {
    Box::new(|c| Box::pin(async move { c.query_first("SELECT UUID_SHORT()").await }))
}

pub(crate) fn kill_connection(id: u32) -> Op<()> {
    Box::new(move |c| Box::pin(async move { c.query_drop(format!("KILL CONNECTION {id}")).await }))
}

pub(crate) fn ping() -> Op<()> {
    Box::new(|c| Box::pin(async move { c.ping().await }))
}
