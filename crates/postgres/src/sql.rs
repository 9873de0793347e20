//! The statement texts of the hot path and how their answers are read: the attempt, the
//! blocking wait, the unlocks and resets, a semaphore's all-or-none attempt on its permit keys.
//! Each text fixes its parameter types with explicit casts (it is the key of a session's
//! prepared statements); the values are bound.

use distlock_core::{Error, Result};

use crate::BACKEND;
use crate::config::Scope;
use crate::fault::describe;
use crate::key::{self, AdvisoryKey};
use crate::session::{Param, Stmt};

/// The rows a statement answered.
pub(crate) type Rows = Vec<tokio_postgres::Row>;

/// The statement pieces for one key and mode.
#[derive(Clone, Copy)]
pub(crate) struct Sql {
    pub(crate) key: AdvisoryKey,
    pub(crate) shared: bool,
    pub(crate) scope: Scope,
}

impl Sql {
    /// The key as parameters: the argument list (`$1::int8`, or `$1::int4, $2::int4`) and the
    /// values.
    fn key(self) -> (&'static str, Vec<Param>) {
        match self.key {
            AdvisoryKey::Bigint(k) => ("$1::int8", vec![Param::Int8(k)]),
            AdvisoryKey::Pair(a, b) => ("$1::int4, $2::int4", vec![Param::Int4(a), Param::Int4(b)]),
        }
    }

    fn func(self, try_: bool) -> String {
        format!(
            "pg{}_advisory{}_lock{}({})",
            if try_ { "_try" } else { "" },
            if self.scope == Scope::Transaction {
                "_xact"
            } else {
                ""
            },
            if self.shared { "_shared" } else { "" },
            self.key().0
        )
    }

    /// The attempt that never waits: one row, the fencing token if granted, else NULL.
    pub(crate) fn attempt(self, seq: &str) -> Stmt {
        Stmt {
            text: format!(
                "SELECT CASE WHEN {} THEN nextval('{seq}') END",
                self.func(true)
            ),
            params: self.key().1,
            begin: self.scope == Scope::Transaction,
        }
    }

    /// The blocking wait: one row, the fencing token in the second column. With `timeout`, the
    /// server gives up after it (SQLSTATE 55P03): `lock_timeout` is set for the transaction,
    /// like `SET LOCAL`, by `set_config` in a subquery that runs before the lock is asked for
    /// (`OFFSET 0` keeps the planner from merging it away). Its value is the last parameter,
    /// bound by the caller.
    pub(crate) fn wait(self, seq: &str, timeout: bool) -> Stmt {
        let (_, params) = self.key();
        let text = if timeout {
            format!(
                "SELECT {}, nextval('{seq}') FROM (SELECT set_config('lock_timeout', ${}::text, \
                 true) OFFSET 0) AS t",
                self.func(false),
                params.len() + 1
            )
        } else {
            format!("SELECT {}, nextval('{seq}')", self.func(false))
        };
        Stmt {
            text,
            params,
            begin: self.scope == Scope::Transaction,
        }
    }

    pub(crate) fn unlock(self) -> Stmt {
        match self.scope {
            Scope::Session => {
                let (args, params) = self.key();
                let shared = if self.shared { "_shared" } else { "" };
                Stmt::new(format!("SELECT pg_advisory_unlock{shared}({args})"), params)
            }
            Scope::Transaction => rollback(),
        }
    }
}

pub(crate) fn rollback() -> Stmt {
    Stmt::new("ROLLBACK", Vec::new())
}

/// What cleans up a session a wait was interrupted on: whatever it may have been granted.
pub(crate) fn reset(scope: Scope) -> Stmt {
    match scope {
        Scope::Session => Stmt::new("SELECT pg_advisory_unlock_all()", Vec::new()),
        Scope::Transaction => rollback(),
    }
}

/// The attempt on `permits` of the `free` permit slots of semaphore `name`, all or none, in one
/// statement: one row per slot won, with the fencing token. The LIMIT stops the tries once
/// `permits` are locked; with fewer, the outer query gives them back (CASE fixes the order:
/// nothing is unlocked when all were taken), or in transaction scope the rollback does.
pub(crate) fn slots_attempt(
    name: &str,
    free: &[u32],
    permits: u32,
    scope: Scope,
    seq: &str,
) -> Stmt {
    let keys = free.iter().map(|i| semaphore_key(name, *i)).collect();
    let slots = free.iter().map(|i| i64::from(*i)).collect();
    let (xact, give_back) = match scope {
        Scope::Transaction => ("_xact", "false"),
        Scope::Session => ("", "NOT pg_advisory_unlock(got.k)"),
    };
    Stmt {
        text: format!(
            "WITH got AS MATERIALIZED (SELECT t.i, t.k \
             FROM unnest($1::int8[], $2::int8[]) AS t(k, i) \
             WHERE pg_try_advisory{xact}_lock(t.k) LIMIT $3::int8), \
             n AS (SELECT count(*) AS c FROM got) \
             SELECT got.i, (SELECT nextval('{seq}')) FROM got, n \
             WHERE CASE WHEN n.c = $3::int8 THEN true ELSE {give_back} END",
        ),
        params: vec![
            Param::Int8Array(keys),
            Param::Int8Array(slots),
            Param::Int8(i64::from(permits)),
        ],
        begin: scope == Scope::Transaction,
    }
}

/// Unlocks the permit `slots` of semaphore `name` (session scope).
pub(crate) fn slots_unlock(name: &str, slots: &[u32]) -> Stmt {
    Stmt::new(
        "SELECT pg_advisory_unlock(k) FROM unnest($1::int8[]) AS k",
        vec![Param::Int8Array(
            slots.iter().map(|&i| semaphore_key(name, i)).collect(),
        )],
    )
}

/// The key of permit `slot` of semaphore `name` (always in the bigint space).
pub(crate) fn semaphore_key(name: &str, slot: u32) -> i64 {
    key::hashed(&format!("distlock-semaphore\u{0}{name}\u{0}{slot}"))
}

/// Cell `i` of the first row as a bigint: `None` when there is no row or the cell is NULL.
pub(crate) fn bigint_cell(rows: &Rows, i: usize) -> Result<Option<i64>> {
    match rows.first() {
        None => Ok(None),
        Some(row) => row.try_get(i).map_err(|e| Error::Backend {
            backend: BACKEND,
            message: format!("unexpected answer from the server: {}", describe(&e)),
            cause: Default::default(),
        }),
    }
}

pub(crate) fn parse_token(value: Option<i64>) -> Result<u64> {
    value
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| Error::Backend {
            backend: BACKEND,
            message: format!(
                "unexpected fencing token {:?} from the server",
                value.map(|t| t.to_string())
            ),
            cause: Default::default(),
        })
}

/// The permit slots in the first cell of every row, `None` if one is not a slot number.
pub(crate) fn slot_cells(rows: &Rows) -> Option<Vec<u32>> {
    rows.iter()
        .map(|row| {
            let slot: Option<i64> = row.try_get(0).ok()?;
            u32::try_from(slot?).ok()
        })
        .collect()
}

/// The first reply cell of the first row (simple protocol).
pub(crate) fn first_cell(rows: &[Vec<Option<String>>]) -> Option<String> {
    rows.first().and_then(|r| r.first()).cloned().flatten()
}
