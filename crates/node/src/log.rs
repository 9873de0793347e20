//! The backends' `tracing` events, forwarded to a JS function (`util.debuglog('distlock')`).
//!
//! Nothing is installed until JS asks for it (`NODE_DEBUG=distlock`), so the events cost one
//! relaxed load of tracing's global dispatcher state otherwise. Once installed, an event at or
//! above the level asked for is formatted where it happens (any thread) and queued to the JS
//! thread through one weak threadsafe function: it never keeps the process alive and never
//! blocks the thread that logged.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::errors::to_js;

type LogFn = ThreadsafeFunction<String, (), String, Status, false, true>;

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Forwards events at `level` and above to `tsfn`.
struct Forward {
    level: Level,
    tsfn: LogFn,
    next_span: AtomicU64,
}

/// Formats an event's fields: the message first, then `key=value` pairs.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Level's order: TRACE is the "largest"; enabled means at least as severe as asked.
        *metadata.level() <= self.level && metadata.target().starts_with("distlock")
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not reported; ids only need to be non-zero.
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields
            .message
            .strip_prefix("distlock: ")
            .unwrap_or(&fields.message);
        let line = format!(
            "{} {}: {message}{}",
            meta.level(),
            meta.target(),
            fields.rest
        );
        self.tsfn
            .call(line, ThreadsafeFunctionCallMode::NonBlocking);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Routes the backends' events at `level` (`error`, `warn`, `info`, `debug`, `trace`) and
/// above to `callback(line)`, for the rest of the process. Returns false if a subscriber was
/// installed already (the first call wins).
#[napi]
pub fn set_logger(env: Env, level: String, callback: Function<String, ()>) -> Result<bool> {
    let level: Level = level.parse().map_err(|_| {
        let message = format!("must be error, warn, info, debug or trace, got {level:?}");
        to_js(&env, distlock_core::Error::invalid("log level", message))
    })?;
    if INSTALLED.get().is_some() {
        return Ok(false);
    }
    let tsfn: LogFn = callback
        .build_threadsafe_function()
        .weak::<true>()
        .callee_handled::<false>()
        .build()?;
    let forward = Forward {
        level,
        tsfn,
        next_span: AtomicU64::new(0),
    };
    if tracing::subscriber::set_global_default(forward).is_err() {
        return Ok(false);
    }
    let _ = INSTALLED.set(());
    Ok(true)
}
