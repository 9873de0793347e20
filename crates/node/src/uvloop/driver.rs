//! Which driver answers the calls that wait: what `DISTLOCK_DRIVER` asks for, and whether the
//! event-loop driver can run in this process at all ([`unavailable`]).

use std::ffi::CStr;

use napi::sys;

use super::ffi::{UV, probe, resolve, runtime_marks};

/// What `DISTLOCK_DRIVER` asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Asked {
    /// Unset, empty or `auto`: the event loop where it can run, else tokio.
    Auto,
    /// `event-loop`: the event loop, or an error that says why it cannot run.
    EventLoop,
    /// `tokio`: the tokio runtime for everything.
    Tokio,
}

/// What `DISTLOCK_DRIVER` asks for now (it is read for each provider).
pub(super) fn asked() -> distlock_core::Result<Asked> {
    parse_driver(std::env::var_os("DISTLOCK_DRIVER").as_deref())
}

fn parse_driver(value: Option<&std::ffi::OsStr>) -> distlock_core::Result<Asked> {
    match value.map(|v| v.to_str()) {
        None | Some(Some("" | "auto")) => Ok(Asked::Auto),
        Some(Some("event-loop")) => Ok(Asked::EventLoop),
        Some(Some("tokio")) => Ok(Asked::Tokio),
        Some(other) => Err(distlock_core::Error::invalid(
            "DISTLOCK_DRIVER",
            format!(
                "is {:?}: it takes \"event-loop\", \"tokio\" or \"auto\" (the same as unset)",
                other.unwrap_or("(not UTF-8)")
            ),
        )),
    }
}

/// What happens when the event loop cannot run here (`why`): with `DISTLOCK_DRIVER=event-loop`
/// an error that says why, else the tokio fallback (no loop).
pub(super) fn fallback<T>(asked: Asked, why: &str) -> distlock_core::Result<Option<T>> {
    if asked == Asked::EventLoop {
        return Err(distlock_core::Error::invalid(
            "DISTLOCK_DRIVER",
            format!(
                "is \"event-loop\", but the event-loop driver cannot run here: {why}; \
                 unset DISTLOCK_DRIVER (or set it to \"tokio\") to use the runtime driver"
            ),
        ));
    }
    tracing::debug!("the runtime driver answers the calls that wait: {why}");
    Ok(None)
}

/// Why the event-loop driver cannot run in this process, or `None` when it can; found once,
/// on the first call (on a JS thread, inside a Node-API call with its live `env`).
///
/// libuv's functions are resolved from the host process at run time. That they resolve proves
/// nothing: Bun and Deno export `uv_*` functions of their own (Bun's poll functions abort the
/// process; with Deno's, replies on watched sockets go unread). So the order matters: a
/// runtime that stands in for libuv is recognised before any `uv_*` function is called, the
/// functions are called only once all resolve, and then a `uv_poll_t` on a private loop must
/// really report a socket readable ([`probe`]).
pub(super) fn unavailable(env: sys::napi_env) -> Option<&'static str> {
    UV.get_or_init(|| {
        if let Some(host) = stand_in_runtime(env) {
            return Err(host);
        }
        let uv = resolve().map_err(|name| format!("the host has no libuv function {name}"))?;
        probe(&uv)?;
        Ok(uv)
    })
    .as_ref()
    .err()
    .map(String::as_str)
}

/// The runtimes whose `uv_*` functions are their own stand-ins, not libuv: how it is known and
/// what their functions do. They say who they are in `process.versions` (and their globals).
/// Node with a global named `Bun` or `Deno` (a shim) gets the tokio driver too: slower, never
/// wrong, where missing a real Bun would abort the process.
fn stand_in_runtime(env: sys::napi_env) -> Option<String> {
    const STAND_INS: [(&CStr, &CStr, &str); 2] = [
        (
            c"bun",
            c"Bun",
            "its uv_poll_* functions abort the process (\"unsupported uv function\")",
        ),
        (
            c"deno",
            c"Deno",
            "its uv_* functions are its own emulation of libuv, and replies on sockets watched \
             through them go unread (PostgreSQL and Redis calls time out)",
        ),
    ];
    for (key, global_name, why) in STAND_INS {
        let (version, has_global) = runtime_marks(env, key, global_name)?;
        if version.is_some() || has_global {
            let name = global_name.to_string_lossy();
            let version = version.map(|v| format!(" {v}")).unwrap_or_default();
            return Some(format!("{name}{version} is not Node: {why}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names() {
        let parse = |v: Option<&str>| parse_driver(v.map(std::ffi::OsStr::new));
        assert_eq!(parse(None).ok(), Some(Asked::Auto));
        assert_eq!(parse(Some("")).ok(), Some(Asked::Auto));
        assert_eq!(parse(Some("auto")).ok(), Some(Asked::Auto));
        assert_eq!(parse(Some("event-loop")).ok(), Some(Asked::EventLoop));
        assert_eq!(parse(Some("tokio")).ok(), Some(Asked::Tokio));
        let err = parse(Some("Tokio")).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "DISTLOCK_DRIVER is \"Tokio\": it takes \"event-loop\", \"tokio\" or \"auto\" \
                 (the same as unset)"
            )
        );
    }
}
