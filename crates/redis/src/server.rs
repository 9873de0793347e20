//! One Redis deployment (a server, a cluster or a Sentinel group) as two fred clients: one for
//! commands (pipelined), one subscribed to distlock's wake-up channels.
//!
//! Both connect in the background on first use and reconnect on their own; a command waits for
//! the connection only as long as its caller's budget allows (every caller races its commands
//! against its own deadline), so a server that hangs at connect never stretches a call. The
//! command client reports its connection losses and reconnects as [`Event`]s: a lock on a
//! server whose connection dropped is in doubt until a renewal after the reconnect finds its
//! key again (a server restarted empty or a promoted replica may have lost it). One
//! confirmation runs per server at a time, round after round until it succeeds
//! ([`crate::machine::confirm`]); a reconnect wakes it for a round at once.
//!
//! Closing ([`Server::quit`]) has a deadline: a connected client says QUIT within it, then every
//! client's tasks are ended. A client that is not connected is not waited for: fred queues its
//! QUIT until a connection comes, so it would take the whole bound and then keep reconnecting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{Key, Value};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use distlock_core::reactor::Reactor;
use distlock_core::sync::lock;
use distlock_core::{CancellationToken, Fault};

use crate::config::ServerSpec;
use crate::direct::Direct;
use crate::doubt::{Doubt, Event};
use crate::fault::{connection_error, describe, refusal, tls_hint};
use crate::keys::CHANNEL_PATTERN;
use crate::scripts::Script;
use crate::wake::Wakes;

pub struct Server {
    pub label: String,
    spec: ServerSpec,
    command_timeout: Duration,
    client: OnceLock<Client>,
    subscriber: Arc<OnceLock<SubscriberClient>>,
    subscribed: Arc<AtomicBool>,
    /// The last connection error since the last successful connect (its cause, for messages,
    /// and whether retrying can help).
    last_error: Arc<Mutex<Option<Fault>>>,
    /// The command client has connected at least once (so the URL's scheme fits the server).
    connected_once: Arc<AtomicBool>,
    /// Whether the locks here are in doubt (see [`Doubt`]).
    doubt: Arc<Doubt>,
    /// A confirmation of the locks here is running (one at a time).
    confirming: AtomicBool,
    /// Wakes a confirmation that pauses between rounds (the connection came back).
    kick: Notify,
    init: Mutex<()>,
    /// Subscriptions to the sentinels' announcements (Sentinel deployments).
    sentinels: Mutex<Vec<SubscriberClient>>,
    /// The connection on the host's event loop, for calls made there (see [`Direct`]).
    direct: OnceLock<Direct>,
    /// The clients' own tasks (connection, resubscription), ended by [`Server::quit`].
    tasks: Mutex<Vec<AbortHandle>>,
    /// Ends this server's tasks that follow the clients (cancelled by [`Server::quit`]).
    stop: CancellationToken,
}

/// What a moved master does to one server's state (see [`Server::master_moved`]).
struct Moved {
    subscriber: Arc<OnceLock<SubscriberClient>>,
    doubt: Arc<Doubt>,
}

impl Moved {
    fn fire(&self, client: &Client) {
        self.doubt.moved();
        let client = client.clone();
        // The wake-up subscription follows the master too.
        let subscriber = self.subscriber.get().cloned();
        tokio::spawn(async move {
            let _ = client.force_reconnection().await;
            if let Some(sub) = subscriber {
                let _ = sub.force_reconnection().await;
            }
        });
    }
}

/// Reconnect (and first connect) after 1, 4, 16, 64, 256 ms, then every second, with up to 5 ms
/// of jitter: fred's default jitter (up to 100 ms) would delay even the first connection.
fn reconnect_policy() -> ReconnectPolicy {
    let mut policy = ReconnectPolicy::new_exponential(0, 1, 1_000, 4);
    policy.set_jitter(5);
    policy
}

impl Server {
    pub fn new(
        index: usize,
        spec: ServerSpec,
        command_timeout: Duration,
        events: UnboundedSender<Event>,
    ) -> Self {
        Self {
            label: spec.label.clone(),
            spec,
            command_timeout,
            client: OnceLock::new(),
            subscriber: Arc::default(),
            subscribed: Arc::new(AtomicBool::new(false)),
            last_error: Arc::default(),
            connected_once: Arc::new(AtomicBool::new(false)),
            doubt: Arc::new(Doubt::new(index, events)),
            confirming: AtomicBool::new(false),
            kick: Notify::new(),
            init: Mutex::new(()),
            sentinels: Mutex::default(),
            direct: OnceLock::new(),
            tasks: Mutex::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Runs the scripts of calls made on `reactor`'s loop thread on a connection there, when
    /// this server is one plain TCP server (see [`Direct`]).
    pub fn attach(&self, reactor: Arc<dyn Reactor>) {
        if let Some(d) = Direct::new(
            &self.spec.config,
            &self.label,
            self.command_timeout,
            reactor,
            self.doubt.clone(),
        ) {
            let _ = self.direct.set(d);
        }
    }

    /// This server's doubt: whether its locks are confirmed since the last connection loss.
    pub fn doubt(&self) -> &Doubt {
        &self.doubt
    }

    /// Whether the connection dropped and the locks there are not yet confirmed.
    pub fn in_doubt(&self) -> bool {
        self.doubt.in_doubt()
    }

    /// Claims the confirmation of this server's locks: `true` when none was running, so the
    /// caller runs it; `false` when one runs already (it was woken for a round at once).
    pub fn begin_confirming(&self) -> bool {
        if self.confirming.swap(true, Ordering::AcqRel) {
            self.kick.notify_one();
            return false;
        }
        true
    }

    /// Ends the running confirmation; `true` when the locks fell in doubt again just now and
    /// the caller keeps confirming (it claimed the confirmation again).
    pub fn end_confirming(&self) -> bool {
        self.confirming.store(false, Ordering::Release);
        self.in_doubt() && self.begin_confirming()
    }

    /// Resolves when the connection came back (or a confirmation was asked for) since the last
    /// call.
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }

    /// Whether the last connection error is one a retry cannot fix (a wrong password, TLS).
    pub fn refused(&self) -> bool {
        self.refusal().is_some()
    }

    fn refusal(&self) -> Option<String> {
        lock(&self.last_error)
            .as_ref()
            .filter(|e| !e.transient)
            .map(|e| e.message.clone())
    }

    /// The last connection error, if the server cannot be reached now.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).as_ref().map(|e| e.message.clone())
    }

    /// Why the server cannot be reached now, if that is known: the last connection error, or,
    /// when the URL asked for TLS and no connection was ever made, the hint that the server may
    /// not speak it (a server without TLS is silent at the handshake until the connect times
    /// out, later than a short call gives up).
    pub fn unreachable_because(&self) -> Option<String> {
        self.last_error().or_else(|| {
            let pending = self.spec.config.tls.is_some()
                && !self.connected_once.load(Ordering::Acquire)
                && self.client.get().is_some_and(|c| !c.is_connected());
            pending.then(|| format!("no TLS connection yet; {}", tls_hint(&self.label)))
        })
    }

    /// `describe`, plus the last connection error when the server could not be reached.
    pub fn explain(&self, e: &fred::error::Error) -> String {
        let base = describe(&self.label, self.command_timeout, e);
        match lock(&self.last_error).as_ref() {
            Some(cause) if !base.contains(cause.message.as_str()) => {
                format!("{base} (last connection error: {})", cause.message)
            }
            _ => base,
        }
    }

    /// How long one connect (TCP, TLS, login) may take.
    fn connect_timeout(&self) -> Duration {
        self.command_timeout.max(Duration::from_millis(500))
    }

    fn builder(&self) -> Builder {
        let mut config = self.spec.config.clone();
        // Keep reconnecting from the first attempt on; callers bound their own waits.
        config.fail_fast = false;
        let mut b = Builder::from_config(config);
        let (command, connect) = (self.command_timeout, self.connect_timeout());
        b.with_connection_config(|c| {
            c.connection_timeout = connect;
            c.internal_command_timeout = connect;
            // A command is sent once: a request that may have run is cleaned up by its caller
            // (release or revoke of its token), never replayed on a new connection.
            c.max_command_attempts = 1;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
        })
        .with_performance_config(|p| p.default_command_timeout = command)
        .set_policy(reconnect_policy());
        b
    }

    /// The command client; the first call starts it connecting (in the background).
    pub fn client(&self) -> Result<&Client, fred::error::Error> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let _init = lock(&self.init);
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        closed(&self.stop)?;
        let client = self.builder().build()?;
        self.watch(&client);
        lock(&self.tasks).push(client.connect().abort_handle());
        if let ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } = &self.spec.config.server
        {
            self.follow_sentinels(&client, hosts, service_name);
        }
        Ok(self.client.get_or_init(|| client))
    }

    /// The master moved (a Sentinel failover) or refused a write (`READONLY`: the server we talk
    /// to was demoted): the locks are in doubt, and the client reconnects to the master the
    /// sentinels name now, where a renewal checks them.
    fn master_moved(&self, client: &Client) {
        self.moved().fire(client);
    }

    fn moved(&self) -> Moved {
        Moved {
            subscriber: self.subscriber.clone(),
            doubt: self.doubt.clone(),
        }
    }

    /// Listens to the sentinels' `+switch-master` announcements for our service: a failover
    /// does not always close the connections to the old master.
    fn follow_sentinels(&self, client: &Client, hosts: &[fred::types::config::Server], name: &str) {
        // The sentinels' own credentials (see `RedisOptions::parse`).
        let (username, password) = match &self.spec.config.server {
            ServerConfig::Sentinel {
                username, password, ..
            } => (username.clone(), password.clone()),
            _ => (None, None),
        };
        for host in hosts {
            let config = Config {
                server: ServerConfig::new_centralized(host.host.to_string(), host.port),
                username: username.clone(),
                password: password.clone(),
                tls: self.spec.config.tls.clone(),
                fail_fast: false,
                ..Config::default()
            };
            let Ok(sub) = Builder::from_config(config)
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                .build_subscriber_client()
            else {
                continue;
            };
            lock(&self.tasks).extend([
                sub.connect().abort_handle(),
                sub.manage_subscriptions().abort_handle(),
            ]);
            let mut messages = sub.message_rx();
            let (moved, client, prefix) = (self.moved(), client.clone(), format!("{name} "));
            lock(&self.sentinels).push(sub.clone());
            let stop = self.stop.clone();
            tokio::spawn(async move {
                let subscribing = sub.clone();
                let stopped = stop.clone();
                tokio::spawn(async move {
                    // Bounded; `manage_subscriptions` subscribes again after reconnects.
                    for _ in 0..600 {
                        if stopped.is_cancelled() {
                            return;
                        }
                        let channels = vec![
                            "+switch-master",
                            "+try-failover",
                            "-failover-abort-no-good-slave",
                            "-failover-abort-not-elected",
                            "+failover-end-for-timeout",
                        ];
                        if subscribing.subscribe(channels).await.is_ok() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                // Ends when the provider closes.
                let master = format!("master {prefix}");
                while let Some(Ok(m)) = stop.run_until_cancelled(messages.recv()).await {
                    let text = m.value.as_str().map(|v| v.to_string()).unwrap_or_default();
                    match m.channel.to_string().as_str() {
                        // The new master is known: reconnect there and check the locks.
                        "+switch-master" if text.starts_with(&prefix) => moved.fire(&client),
                        // A failover begins: until the client is on the new master, the locks
                        // are in doubt and no acquire is sent (the old master may still grant
                        // what the promoted replica never saw).
                        "+try-failover" if text.starts_with(&master) => moved.doubt.hold(),
                        // It ended without a new master: check the locks where they are.
                        _ if text.starts_with(&master) => moved.doubt.recheck(),
                        _ => {}
                    }
                }
            });
        }
    }

    /// Whether wake-ups from this server reach the waiters now.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Starts (once) the subscription to every distlock channel, forwarding messages to `wakes`.
    /// Until it is up, waiters re-check on their own.
    pub fn subscribe(&self, wakes: &Arc<Wakes>) -> Result<(), fred::error::Error> {
        if self.subscriber.get().is_some() {
            return Ok(());
        }
        let _init = lock(&self.init);
        if self.subscriber.get().is_some() {
            return Ok(());
        }
        closed(&self.stop)?;
        let sub = self.builder().build_subscriber_client()?;
        forward(
            &sub,
            Arc::downgrade(wakes),
            self.subscribed.clone(),
            self.stop.clone(),
        );
        // `manage_subscriptions` re-subscribes after every reconnect until the provider closes.
        lock(&self.tasks).extend([
            sub.connect().abort_handle(),
            sub.manage_subscriptions().abort_handle(),
        ]);
        let first = sub.clone();
        let subscribed = self.subscribed.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            // Bounded: the pattern is registered with the client even if this times out, and
            // `manage_subscriptions` sends it again on the next connect.
            for _ in 0..600 {
                if stop.is_cancelled() {
                    return;
                }
                if first.psubscribe(CHANNEL_PATTERN).await.is_ok() {
                    subscribed.store(true, Ordering::Release);
                    return;
                }
                if !first.is_connected() && first.state() == ClientState::Disconnected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let _ = self.subscriber.set(sub);
        Ok(())
    }

    /// Runs `script` (by SHA, loading it when the server does not know it yet).
    pub async fn eval(
        &self,
        script: &Script,
        keys: Arc<[Key]>,
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        self.run(script, keys, args, true).await
    }

    /// Runs `script` by its text: for a request that must work the first time it reaches the
    /// server, even after a stall (a SHA the server does not know yet would fail with
    /// `NOSCRIPT` when nobody waits for the answer any more).
    pub async fn eval_text(
        &self,
        script: &Script,
        keys: Arc<[Key]>,
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        self.run(script, keys, args, false).await
    }

    /// On the event loop's own connection when the call is made there and it is up; else (or
    /// when the server lost its scripts) through fred. Only the fred path is boxed: it is a
    /// large future, and the event loop's path is the hot one.
    async fn run(
        &self,
        script: &Script,
        keys: Arc<[Key]>,
        args: Vec<Value>,
        by_sha: bool,
    ) -> Result<Value, fred::error::Error> {
        let client = self.client()?;
        if let Some(direct) = self.direct.get()
            && let Some(reply) = direct.eval(script, &keys, &args, by_sha)
        {
            match reply.await {
                // The server lost its scripts (SCRIPT FLUSH, a restart): it did not run it;
                // fred's path below loads it again.
                Err(e) if e.details().starts_with("NOSCRIPT") => {}
                out => {
                    if let Err(e) = &out
                        && e.details().starts_with("READONLY")
                    {
                        self.master_moved(client);
                    }
                    return out;
                }
            }
        }
        Box::pin(self.run_fred(client, script, keys.to_vec(), args, by_sha)).await
    }

    async fn run_fred(
        &self,
        client: &Client,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
        by_sha: bool,
    ) -> Result<Value, fred::error::Error> {
        self.connected(client).await?;
        let out = if by_sha {
            match client
                .evalsha::<Value, _, _, _>(script.sha.as_str(), keys.clone(), args.clone())
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    client.eval(script.lua, keys, args).await
                }
                other => other,
            }
        } else {
            client.eval(script.lua, keys, args).await
        };
        if let Err(e) = &out
            && e.details().starts_with("READONLY")
        {
            self.master_moved(client);
        }
        out
    }

    /// Waits for `client` to connect, within the command timeout (callers bound the whole call
    /// with their budget): a cluster client cannot route before it has the slot map. Stops at
    /// once when the server refused us for good (a wrong password); `Ok` also when the wait
    /// ran out (the command then fails or waits on its own). The connect notice can come
    /// before `waiting` listens: the state is polled too.
    pub async fn connected(&self, client: &Client) -> Result<(), fred::error::Error> {
        if !client.is_connected() {
            let waiting = client.wait_for_connect();
            tokio::pin!(waiting);
            let until = Instant::now() + self.command_timeout;
            while Instant::now() < until && !client.is_connected() {
                if let Some(cause) = self.refusal() {
                    return Err(fred::error::Error::new(ErrorKind::Auth, cause));
                }
                let tick = Instant::now() + Duration::from_millis(10);
                tokio::select! {
                    _ = &mut waiting => break,
                    _ = tokio::time::sleep_until(tick.min(until)) => {}
                }
            }
        }
        match self.refusal() {
            Some(cause) => Err(fred::error::Error::new(ErrorKind::Auth, cause)),
            None => Ok(()),
        }
    }

    /// Scripts sent on the host event loop's connection so far.
    pub fn sent_on_loop(&self) -> u64 {
        self.direct.get().map_or(0, Direct::sent)
    }

    /// Closes the connections by `until`, whatever the server does: each connected client
    /// says QUIT (after what is queued on it), one that is not connected is not waited for;
    /// then the clients' tasks end (one still connecting would otherwise keep reconnecting).
    pub async fn quit(&self, until: Instant) {
        self.stop.cancel();
        if let Some(d) = self.direct.get() {
            d.close();
        }
        let sentinels = std::mem::take(&mut *lock(&self.sentinels));
        let client = async {
            if let Some(c) = self.client.get() {
                goodbye(c, until).await;
            }
        };
        let subscriber = async {
            if let Some(s) = self.subscriber.get() {
                goodbye(s, until).await;
            }
        };
        let sentinels = futures_util::future::join_all(sentinels.iter().map(|s| goodbye(s, until)));
        futures_util::future::join3(client, subscriber, sentinels).await;
        for task in std::mem::take(&mut *lock(&self.tasks)) {
            task.abort();
        }
    }

    /// Follows the command client's connection: errors put its locks in doubt and are kept as
    /// the cause for messages; every connect is reported so the locks can be confirmed.
    fn watch(&self, client: &Client) {
        let mut errors = client.error_rx();
        let mut connects = client.reconnect_rx();
        let (last_error, doubt) = (self.last_error.clone(), self.doubt.clone());
        let (once, stop) = (self.connected_once.clone(), self.stop.clone());
        let (label, tls) = (self.label.clone(), self.spec.config.tls.is_some());
        let connect_timeout = self.connect_timeout();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                tokio::select! {
                    // In the order fred sent them: a loss counted after the reconnect that
                    // followed it would look like a new loss to the confirmation of that
                    // reconnect.
                    biased;
                    () = stop.cancelled() => return,
                    e = errors.recv() => match e {
                        Ok((e, _)) => {
                            if e.is_canceled() {
                                continue;
                            }
                            let first = !once.load(Ordering::Acquire);
                            let words = connection_error(&label, tls, first, connect_timeout, &e);
                            *lock(&last_error) = Some(Fault::new(words, !refusal(&e)));
                            if !doubt.lose(Event::Lost) {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    c = connects.recv() => match c {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            once.store(true, Ordering::Release);
                            *lock(&last_error) = None;
                            if !doubt.announce(Event::Connected) {
                                return;
                            }
                        }
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
    }
}

/// No new client once the provider closed: nothing would end its tasks.
fn closed(stop: &CancellationToken) -> Result<(), fred::error::Error> {
    if stop.is_cancelled() {
        return Err(fred::error::Error::new(
            ErrorKind::Canceled,
            "the lock provider was closed",
        ));
    }
    Ok(())
}

/// QUIT on `client` by `until` when it is connected; none when it is not (fred would hold the
/// QUIT until a connection comes).
async fn goodbye(client: &impl ClientLike, until: Instant) {
    if client.is_connected() {
        let _ = tokio::time::timeout_at(until, client.quit()).await;
    }
}

/// Forwards the subscriber's messages to the waiters; a reconnect or a lagging receiver wakes
/// everyone, since messages may have been missed.
fn forward(
    sub: &SubscriberClient,
    wakes: Weak<Wakes>,
    subscribed: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut messages = sub.message_rx();
    let mut reconnects = sub.reconnect_rx();
    let mut errors = sub.error_rx();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let woke = tokio::select! {
                () = stop.cancelled() => None,
                m = messages.recv() => match m {
                    Ok(m) => {
                        let payload = m.value.as_str().map(|s| s.to_string()).unwrap_or_default();
                        wakes.upgrade().map(|w| w.deliver(&m.channel, &payload))
                    }
                    Err(RecvError::Lagged(_)) => wakes.upgrade().map(|w| w.wake_all()),
                    Err(_) => None,
                },
                r = reconnects.recv() => match r {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        // `manage_subscriptions` subscribes again on every connect.
                        subscribed.store(true, Ordering::Release);
                        wakes.upgrade().map(|w| w.wake_all())
                    }
                    Err(_) => None,
                },
                e = errors.recv() => match e {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        // Until the reconnect, waiters re-check on their own.
                        subscribed.store(false, Ordering::Release);
                        Some(())
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
