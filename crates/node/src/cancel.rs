//! [`CancelToken`]: how an `AbortSignal` reaches the waits it cancels.

use distlock_core::CancellationToken;
use napi_derive::napi;

/// A token the TS layer fires when the caller's `AbortSignal` aborts.
#[napi]
pub struct CancelToken {
    token: CancellationToken,
}

impl CancelToken {
    /// The core's token, for a wait to race against.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

#[napi]
impl CancelToken {
    #[napi(constructor)]
    pub fn new() -> Self {
        Self {
            token: CancellationToken::new(),
        }
    }

    /// Cancels every wait this token was passed to.
    #[napi]
    pub fn cancel(&self) {
        self.token.cancel();
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}
