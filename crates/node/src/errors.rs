//! How a failure crosses to JS: as an `Error` object whose `message` is the plain message and
//! whose own properties carry the stable `code` and, where known, the facts of its cause
//! (`server`, `errno`, `syscall`, `path`, `sqlstate`, `redis`, `causeMessage`). The TS layer's
//! `toLockError` turns that object into the matching `LockError` subclass, reading only those
//! properties; nothing is encoded in the message text.

use distlock_core::Cause;
use napi::bindgen_prelude::*;

/// A failure on its way to JS: a core error's code, message and cause, or one of the binding's
/// own. Built on any thread; made a JS value on the JS thread ([`Failure::into_js`]).
#[derive(Debug)]
pub struct Failure {
    /// The core's stable code (`TIMEOUT`, `BACKEND`, …), or `ERR_INTERNAL`.
    code: &'static str,
    message: String,
    /// Boxed: a failure travels in every answer's `Result`, which stays small.
    cause: Box<Cause>,
}

impl From<distlock_core::Error> for Failure {
    fn from(err: distlock_core::Error) -> Self {
        Self {
            code: err.code(),
            message: err.to_string(),
            cause: Box::new(err.cause()),
        }
    }
}

impl Failure {
    /// A fault of the binding itself (a panic, a channel that is gone): code `ERR_INTERNAL`,
    /// which the TS layer passes on as it is.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: "ERR_INTERNAL",
            message: message.into(),
            cause: Box::default(),
        }
    }

    /// An operating-system error in the binding's own work (the CLI's spawn, a blocking task
    /// that did not finish): code `IO`, a `LockBackendError` in the TS layer.
    pub fn os(message: impl Into<String>) -> Self {
        Self {
            code: "IO",
            message: message.into(),
            cause: Box::default(),
        }
    }

    /// The JS error object, as an error that throws or rejects with exactly that object. On
    /// the JS thread of `env`. If the object cannot be made (the environment is going away),
    /// the error napi reported instead.
    pub fn into_js(self, env: &Env) -> Error {
        match self.to_object(env) {
            Ok(object) => Error::from(object.to_unknown()),
            Err(e) => e,
        }
    }

    fn to_object<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        let mut object = env.create_error(Error::new(Status::GenericFailure, &self.message))?;
        object.set_named_property("code", self.code)?;
        let cause = &self.cause;
        let texts = [
            ("server", cause.server.as_deref()),
            ("syscall", cause.syscall),
            ("path", cause.path.as_deref()),
            ("sqlstate", cause.sqlstate.as_deref()),
            ("redis", cause.redis.as_deref()),
            ("causeMessage", cause.message.as_deref()),
        ];
        for (key, value) in texts {
            if let Some(value) = value {
                object.set_named_property(key, value)?;
            }
        }
        if let Some(errno) = cause.errno {
            object.set_named_property("errno", errno)?;
        }
        Ok(object)
    }
}

/// A core error as the JS error that throws or rejects with it (see [`Failure::into_js`]).
pub fn to_js(env: &Env, err: distlock_core::Error) -> Error {
    Failure::from(err).into_js(env)
}

/// A promise of `fut`, run on the runtime: it resolves with the value, or rejects with the
/// failure made a JS error on the JS thread.
pub fn promise<'env, T, F>(env: &'env Env, fut: F) -> Result<PromiseRaw<'env, T>>
where
    T: ToNapiValue + Send + 'static,
    F: std::future::Future<Output = std::result::Result<T, Failure>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(fut.await) }, |env, answer| {
        answer.map_err(|failure| failure.into_js(env))
    })
}
