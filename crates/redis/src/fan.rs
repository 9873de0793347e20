//! Requests polled on the caller's task: one sent now with the rest finished in the
//! background ([`send_now`]), and one per server with answers taken as they come ([`Fan`]).

use distlock_core::BoxFuture;

/// Polls `fut` once on the calling thread (so a request it makes is written now, in order with
/// the caller's earlier ones), then lets it finish on the runtime.
pub(crate) fn send_now(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut fut = Box::pin(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if fut.as_mut().poll(&mut cx).is_pending()
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        rt.spawn(fut);
    }
}

/// One request per server, polled on the caller's task (on the JS thread, that is where their
/// sockets are), answers yielded as they come; what is left can finish in the background.
pub(crate) struct Fan<T: Send + 'static> {
    futs: Vec<Option<BoxFuture<'static, T>>>,
    /// Already finishing in the background: dropped, it does not hand itself on again (a
    /// runtime that shuts down drops such tasks before they run).
    background: bool,
}

impl<T: Send + 'static> Fan<T> {
    pub(crate) fn new<F>(futs: impl Iterator<Item = F>) -> Self
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        Self {
            futs: futs
                .map(|f| Some(Box::pin(f) as BoxFuture<'static, T>))
                .collect(),
            background: false,
        }
    }

    /// The next answer and the index of its server; `None` when all have answered.
    pub(crate) async fn next(&mut self) -> Option<(usize, T)> {
        std::future::poll_fn(|cx| {
            let mut left = false;
            for (i, slot) in self.futs.iter_mut().enumerate() {
                let Some(f) = slot else { continue };
                left = true;
                if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                    *slot = None;
                    return std::task::Poll::Ready(Some((i, v)));
                }
            }
            if left {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(None)
            }
        })
        .await
    }

    /// Lets the unanswered requests finish on the runtime, handing each answer to `each`.
    pub(crate) fn rest(mut self, mut each: impl FnMut(usize, T) + Send + 'static) {
        let mut left = Fan {
            futs: std::mem::take(&mut self.futs),
            background: true,
        };
        if left.futs.iter().all(Option::is_none) {
            return;
        }
        tokio::spawn(async move {
            while let Some((i, v)) = left.next().await {
                each(i, v);
            }
        });
    }
}

impl<T: Send + 'static> Drop for Fan<T> {
    /// Requests a dropped caller leaves behind still finish (a release's revoke on error runs),
    /// as they did when each ran in its own task.
    fn drop(&mut self) {
        if self.background || self.futs.iter().all(Option::is_none) {
            return;
        }
        let mut left = Fan {
            futs: std::mem::take(&mut self.futs),
            background: true,
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { while left.next().await.is_some() {} });
        }
    }
}
