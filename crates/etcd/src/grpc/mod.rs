//! A thin etcd v3 gRPC client: the calls distlock makes, and nothing else.
//!
//! Messages are the hand-written `prost` structs of [`wire`]; calls go through tonic's generic
//! [`tonic::client::Grpc`] with the prost codec, by method path (`/etcdserverpb.KV/Txn`…), so
//! no `.proto` file is compiled and building needs no `protoc`. Each [`Client`] is one HTTP/2
//! connection to one endpoint (tonic reconnects it after a failure); choosing the endpoint is the
//! pool's business (`pool.rs`).
//!
//! Every request carries `hasleader: true` (etcd then refuses it at once on a member cut off
//! from its leader, instead of letting it hang) and, with user/password authentication, the
//! token from `Authenticate` in `token`. A request refused for its token (expired, or the auth
//! store moved on) authenticates again, once per stale token however many requests found it,
//! and is sent once more.
//!
//! Public for the crate's own tests (they need a raw client), not a supported API.

pub mod wire;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc;
use tonic::metadata::{Ascii, MetadataValue};
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};
use tonic_prost::ProstCodec;

use wire::*;

/// How to connect.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Bound on establishing the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// HTTP/2 pings: how often, and how long to wait for the answer before the connection
    /// counts as dead.
    pub keep_alive: Option<(Duration, Duration)>,
    /// TLS for `https://` endpoints.
    pub tls: Option<ClientTlsConfig>,
    /// User and password for etcd's authentication.
    pub user: Option<(String, String)>,
}

/// A failed call.
#[derive(Debug)]
pub enum Error {
    /// etcd (or gRPC on the way) answered with an error status.
    Status(Status),
    /// The connection could not be made.
    Transport(tonic::transport::Error),
    /// Something this side refused before sending (a bad endpoint, a token that is no header).
    Invalid(String),
}

impl Error {
    /// The gRPC status code, for an answer.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// Whether etcd said the lease does not exist (expired or revoked).
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, Error::Status(s) if s.message().contains("lease not found"))
    }
}

/// gRPC's name of a status code, in words.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Not `Status`'s own Display: it prints the metadata map in Rust's debug syntax.
            Error::Status(s) if s.message().is_empty() => {
                write!(f, "gRPC status {}", code_name(s.code()))
            }
            Error::Status(s) => write!(f, "{} (gRPC status {})", s.message(), code_name(s.code())),
            Error::Transport(e) => e.fmt(f),
            Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Status(s) => std::error::Error::source(s),
            Error::Transport(e) => std::error::Error::source(e),
            Error::Invalid(_) => None,
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status(s)
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Transport(e)
    }
}

/// Whether etcd refused the request for its token: expired or unknown (`Unauthenticated`; the
/// Lock and Election services lose the code and keep the message), or issued before the auth
/// store changed.
fn token_refused(s: &Status) -> bool {
    let m = s.message();
    s.code() == Code::Unauthenticated
        || m.contains("invalid auth token")
        || m.contains("auth store is old")
}

/// The credentials and the current token.
struct Auth {
    user: String,
    password: String,
    token: RwLock<Option<MetadataValue<Ascii>>>,
    /// One re-authentication at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// One connection to one etcd endpoint. Clones share the connection and the token.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc<Channel>,
    auth: Option<Arc<Auth>>,
}

const KV_RANGE: &str = "/etcdserverpb.KV/Range";
const KV_PUT: &str = "/etcdserverpb.KV/Put";
const KV_DELETE_RANGE: &str = "/etcdserverpb.KV/DeleteRange";
const KV_TXN: &str = "/etcdserverpb.KV/Txn";
const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const LEASE_REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
const LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const LEASE_TIME_TO_LIVE: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
const WATCH: &str = "/etcdserverpb.Watch/Watch";
const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";

impl Client {
    /// Connects to `url` (`http://host:port` or `https://host:port`) and, with a user set,
    /// authenticates.
    pub async fn connect(url: &str, settings: &Settings) -> Result<Client, Error> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error::Invalid(format!("{url:?} is not a usable URI: {e}")))?
            .connect_timeout(settings.connect_timeout);
        if let Some((every, timeout)) = settings.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(every)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        if let Some(tls) = &settings.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let channel = endpoint.connect().await?;
        let client = Client {
            grpc: Grpc::new(channel),
            auth: settings.user.as_ref().map(|(user, password)| {
                Arc::new(Auth {
                    user: user.clone(),
                    password: password.clone(),
                    token: RwLock::new(None),
                    refreshing: tokio::sync::Mutex::new(()),
                })
            }),
        };
        if let Some(auth) = &client.auth {
            client.authenticate(auth).await?;
        }
        Ok(client)
    }

    fn token(&self) -> Option<MetadataValue<Ascii>> {
        let auth = self.auth.as_ref()?;
        auth.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn request<T>(&self, message: T, with_token: bool) -> Request<T> {
        let mut r = Request::new(message);
        let md = r.metadata_mut();
        md.insert("hasleader", MetadataValue::from_static("true"));
        if with_token && let Some(token) = self.token() {
            md.insert("token", token);
        }
        r
    }

    async fn authenticate(&self, auth: &Auth) -> Result<(), Error> {
        let answer: AuthenticateResponse = self
            .unary_once(
                AUTHENTICATE,
                AuthenticateRequest {
                    name: auth.user.clone(),
                    password: auth.password.clone(),
                },
                false,
            )
            .await?;
        let token = MetadataValue::try_from(answer.token)
            .map_err(|_| Error::Invalid(String::from("etcd sent a token that is not ASCII")))?;
        *auth.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    /// Authenticates again unless another request already replaced the `stale` token.
    async fn refresh(&self, stale: Option<MetadataValue<Ascii>>) -> Result<(), Error> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let _one = auth.refreshing.lock().await;
        if self.token() != stale {
            return Ok(());
        }
        self.authenticate(auth).await
    }

    async fn unary_once<Q, A>(&self, path: &'static str, q: Q, with_token: bool) -> Result<A, Error>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        grpc.ready().await?;
        let answer = grpc
            .unary(
                self.request(q, with_token),
                PathAndQuery::from_static(path),
                ProstCodec::<Q, A>::default(),
            )
            .await?;
        Ok(answer.into_inner())
    }

    /// One unary call by method path, authenticating again once if the token is refused.
    pub async fn unary<Q, A>(&self, path: &'static str, q: Q) -> Result<A, Error>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let stale = self.token();
        match self.unary_once(path, q.clone(), true).await {
            Err(Error::Status(s)) if self.auth.is_some() && token_refused(&s) => {
                self.refresh(stale).await?;
                self.unary_once(path, q, true).await
            }
            other => other,
        }
    }

    async fn stream_once<Q, A>(&self, path: &'static str, first: Q) -> Result<Stream<Q, A>, Error>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        // Not sent yet if the channel were full; it is new, so it is not.
        let _ = tx.try_send(first);
        let mut grpc = self.grpc.clone();
        grpc.ready().await?;
        let answer = grpc
            .streaming(
                self.request(ReceiverStream::new(rx), true),
                PathAndQuery::from_static(path),
                ProstCodec::<Q, A>::default(),
            )
            .await?;
        Ok(Stream {
            tx,
            rx: answer.into_inner(),
        })
    }

    /// Opens a bidirectional stream with `first` as its first request, authenticating again
    /// once if the token is refused.
    pub async fn stream<Q, A>(&self, path: &'static str, first: Q) -> Result<Stream<Q, A>, Error>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let stale = self.token();
        match self.stream_once(path, first.clone()).await {
            Err(Error::Status(s)) if self.auth.is_some() && token_refused(&s) => {
                self.refresh(stale).await?;
                self.stream_once(path, first).await
            }
            other => other,
        }
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse, Error> {
        self.unary(KV_RANGE, r).await
    }

    pub async fn put(&self, p: PutRequest) -> Result<PutResponse, Error> {
        self.unary(KV_PUT, p).await
    }

    pub async fn delete_range(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        self.unary(KV_DELETE_RANGE, r).await
    }

    /// Deletes one key.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteRangeResponse, Error> {
        self.delete_range(DeleteRangeRequest {
            key: key.into(),
            range_end: Vec::new(),
        })
        .await
    }

    pub async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, Error> {
        self.unary(KV_TXN, t).await
    }

    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrantResponse, Error> {
        self.unary(
            LEASE_GRANT,
            LeaseGrantRequest {
                ttl: ttl_secs,
                id: 0,
            },
        )
        .await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        self.unary(LEASE_REVOKE, LeaseRevokeRequest { id }).await
    }

    /// The lease's remaining TTL and the keys on it.
    pub async fn lease_keys(&self, id: i64) -> Result<LeaseTimeToLiveResponse, Error> {
        self.unary(
            LEASE_TIME_TO_LIVE,
            LeaseTimeToLiveRequest { id, keys: true },
        )
        .await
    }

    /// A keep-alive stream for lease `id`, its first renewal already sent.
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<Stream<LeaseKeepAliveRequest, LeaseKeepAliveResponse>, Error> {
        self.stream(LEASE_KEEP_ALIVE, LeaseKeepAliveRequest { id })
            .await
    }

    /// A watch stream with one watcher, `create`.
    pub async fn watch(
        &self,
        create: WatchCreateRequest,
    ) -> Result<Stream<WatchRequest, WatchResponse>, Error> {
        let first = WatchRequest {
            request_union: Some(WatchAction::Create(create)),
        };
        self.stream(WATCH, first).await
    }
}

/// A bidirectional stream. Dropping it ends the call (the server drops its watchers).
pub struct Stream<Q, A> {
    tx: mpsc::Sender<Q>,
    rx: Streaming<A>,
}

impl<Q, A> Stream<Q, A> {
    /// Sends one more request; fails once the call has ended.
    pub async fn send(&self, q: Q) -> Result<(), Error> {
        self.tx
            .send(q)
            .await
            .map_err(|_| Error::Invalid(String::from("the stream is closed")))
    }

    /// The next answer; `None` when the server ended the stream.
    pub async fn message(&mut self) -> Result<Option<A>, Error> {
        Ok(self.rx.message().await?)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("auth", &self.auth.as_ref().map(|a| &a.user))
            .finish()
    }
}
