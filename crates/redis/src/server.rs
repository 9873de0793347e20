//! One Redis deployment (a server, a cluster or a Sentinel group) as two lazily connected fred
//! clients: one for commands (pipelined), one subscribed to distlock's wake-up channels.

use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{Key, Value};
use tokio::sync::OnceCell;

use crate::config::ServerSpec;
use crate::keys::CHANNEL_PATTERN;
use crate::scripts::Script;
use crate::wake::Wakes;

pub struct Server {
    pub label: String,
    spec: ServerSpec,
    connect_timeout: Duration,
    command_timeout: Duration,
    client: OnceCell<Client>,
    subscriber: OnceCell<SubscriberClient>,
}

/// Why a command to one server failed, as a sentence naming the server.
pub fn describe(label: &str, timeout: Duration, e: &fred::error::Error) -> String {
    match e.kind() {
        ErrorKind::Timeout => format!("{label} did not answer within {} ms", timeout.as_millis()),
        _ => {
            let details = e.details();
            if details.contains("WRONGTYPE") {
                format!("{label}: a key of this lock holds another Redis type ({details})")
            } else {
                format!("{label}: {details}")
            }
        }
    }
}

impl Server {
    pub fn new(spec: ServerSpec, connect_timeout: Duration, command_timeout: Duration) -> Self {
        Self {
            label: spec.label.clone(),
            spec,
            connect_timeout,
            command_timeout,
            client: OnceCell::new(),
            subscriber: OnceCell::new(),
        }
    }

    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    fn builder(&self) -> Builder {
        let mut b = Builder::from_config(self.spec.config.clone());
        let connect = self.connect_timeout;
        let command = self.command_timeout;
        b.with_connection_config(|c| {
            c.connection_timeout = connect;
            c.internal_command_timeout = connect;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
        })
        .with_performance_config(|p| p.default_command_timeout = command)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        b
    }

    async fn connect<C: ClientLike>(&self, client: C) -> Result<C, fred::error::Error> {
        let init = tokio::time::timeout(self.connect_timeout, client.init()).await;
        match init {
            Ok(Ok(_)) => Ok(client),
            Ok(Err(e)) => {
                let _ = client.quit().await;
                Err(e)
            }
            Err(_) => {
                let _ = client.quit().await;
                Err(fred::error::Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "could not connect within {} ms",
                        self.connect_timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// The command client, connected on first use. A failed connect is retried by the next call.
    pub async fn client(&self) -> Result<&Client, fred::error::Error> {
        self.client
            .get_or_try_init(|| async { self.connect(self.builder().build()?).await })
            .await
    }

    /// Subscribes (once) to every distlock channel and forwards messages to `wakes`.
    pub async fn subscribe(&self, wakes: &Arc<Wakes>) -> Result<(), fred::error::Error> {
        self.subscriber
            .get_or_try_init(|| async {
                let sub = self
                    .connect(self.builder().build_subscriber_client()?)
                    .await?;
                sub.psubscribe(CHANNEL_PATTERN).await?;
                // Detached: it re-subscribes after reconnects for as long as the client lives.
                drop(sub.manage_subscriptions());
                forward(&sub, Arc::downgrade(wakes));
                Ok(sub)
            })
            .await
            .map(drop)
    }

    /// Runs `script` (by SHA, loading it when the server does not know it yet).
    pub async fn eval(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        let client = self.client().await?;
        match client
            .evalsha::<Value, _, _, _>(script.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(script.lua, keys, args).await
            }
            other => other,
        }
    }

    /// Closes both connections.
    pub async fn quit(&self) {
        if let Some(c) = self.client.get() {
            let _ = tokio::time::timeout(self.command_timeout, c.quit()).await;
        }
        if let Some(s) = self.subscriber.get() {
            let _ = tokio::time::timeout(self.command_timeout, s.quit()).await;
        }
    }
}

/// Forwards the subscriber's messages to the waiters; a reconnect or a lagging receiver wakes
/// everyone, since messages may have been missed.
fn forward(sub: &SubscriberClient, wakes: Weak<Wakes>) {
    let mut messages = sub.message_rx();
    let mut reconnects = sub.reconnect_rx();
    tokio::spawn(async move {
        loop {
            let woke = tokio::select! {
                m = messages.recv() => match m {
                    Ok(m) => {
                        let payload = m.value.as_str().map(|s| s.to_string()).unwrap_or_default();
                        wakes.upgrade().map(|w| w.deliver(&m.channel, &payload))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        wakes.upgrade().map(|w| w.wake_all())
                    }
                    Err(_) => None,
                },
                r = reconnects.recv() => match r {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        wakes.upgrade().map(|w| w.wake_all())
                    }
                    Err(_) => None,
                },
            };
            if woke.is_none() {
                return;
            }
        }
    });
}
