//! Test support for the proxy's side of the API (feature `testing`): a fake operator — a
//! `ConfigPush` server over TLS on loopback that hands each subscription to the test, which
//! then drives it message by message ([`Session`]). The push client's tests and the proxy's
//! (the real proxy behind the client) use it; nothing else links it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::client::ClientConfig;
use crate::v1::config_push_server::{ConfigPush, ConfigPushServer};
use crate::{Hello, ProxyMessage, Snapshot, proxy_message};

/// How long [`Session`]'s and [`FakeOperator`]'s waits last before they fail the test instead of
/// hanging it.
pub const STEP: Duration = Duration::from_secs(10);

/// One subscription as the operator sees it.
#[derive(Debug)]
pub struct Session {
    /// The proxy's Hello.
    pub hello: Hello,
    /// Snapshots (or an ending status) to the proxy.
    pub to_proxy: mpsc::Sender<Result<Snapshot, Status>>,
    /// What the proxy sends.
    pub from_proxy: Streaming<ProxyMessage>,
}

impl Session {
    /// Send `snapshot` to the proxy.
    pub async fn send(&self, snapshot: Snapshot) {
        self.to_proxy
            .send(Ok(snapshot))
            .await
            .expect("the subscription is open");
    }

    /// The proxy's next ACK or NACK within `within` (reports and certificates passed over);
    /// `None` if none came.
    pub async fn answer(&mut self, within: Duration) -> Option<proxy_message::Kind> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.from_proxy.message())
                .await
                .ok()?
                .expect("the stream is healthy")
                .expect("the proxy keeps the stream open");
            match message.kind {
                Some(proxy_message::Kind::Signals(_) | proxy_message::Kind::Certificate(_)) => continue,
                other => return other,
            }
        }
    }

    /// Expect the proxy's next answer to be the ACK of `version`.
    pub async fn expect_ack(&mut self, version: &str) {
        match self.answer(STEP).await {
            Some(proxy_message::Kind::Ack(a)) => assert_eq!(a.version, version),
            other => panic!("expected the ACK of {version}, got {other:?}"),
        }
    }

    /// Expect the proxy's next answer to be the NACK of `version`; its error.
    pub async fn expect_nack(&mut self, version: &str) -> String {
        match self.answer(STEP).await {
            Some(proxy_message::Kind::Nack(n)) => {
                assert_eq!(n.version, version);
                n.error
            }
            other => panic!("expected the NACK of {version}, got {other:?}"),
        }
    }
}

/// Hands each subscription to the test.
struct Sessions(mpsc::UnboundedSender<Session>);

#[tonic::async_trait]
impl ConfigPush for Sessions {
    type SubscribeStream = ReceiverStream<Result<Snapshot, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut from_proxy = request.into_inner();
        let hello = match from_proxy.message().await? {
            Some(ProxyMessage {
                kind: Some(proxy_message::Kind::Hello(hello)),
            }) => hello,
            other => return Err(Status::invalid_argument(format!("expected Hello first, got {other:?}"))),
        };
        let (to_proxy, rx) = mpsc::channel(8);
        self.0
            .send(Session {
                hello,
                to_proxy,
                from_proxy,
            })
            .map_err(|_| Status::unavailable("the test is over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A `ConfigPush` server on a loopback port, serving TLS with the given certificate (for
/// `localhost`), until dropped.
#[derive(Debug)]
pub struct FakeOperator {
    /// Where it listens (`https://{addr}` is a client's endpoint).
    pub addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeOperator {
    /// Serve with `identity` (the server's certificate and key).
    pub async fn start(identity: Identity) -> FakeOperator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (tx, sessions) = mpsc::unbounded_channel();
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .expect("the server's TLS settings")
            .add_service(ConfigPushServer::new(Sessions(tx)))
            .serve_with_incoming(TcpListenerStream::new(listener));
        let task = tokio::spawn(async move {
            server.await.expect("the fake operator serves");
        });
        FakeOperator { addr, sessions, task }
    }

    /// A proxy's settings for subscribing to this operator: pod `shop/web-1`, a sidecar of
    /// ServiceAccount `web`, its files in `dir` — `root.pem` (the root the operator's certificate
    /// chains to), `token`, and `identity/` (its certificate, key and trust bundle) — which the
    /// test writes.
    pub fn client_config(&self, dir: &Path) -> ClientConfig {
        ClientConfig {
            endpoint: format!("https://{}", self.addr),
            server_name: "localhost".into(),
            root_cert: dir.join("root.pem"),
            token: dir.join("token"),
            identity_dir: dir.join("identity"),
            namespace: "shop".into(),
            pod: "web-1".into(),
            role: "sidecar".into(),
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
            proxy_version: "test".into(),
            renewal: Default::default(),
            served: Default::default(),
            files: Default::default(),
        }
    }

    /// The next subscription.
    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(STEP, self.sessions.recv())
            .await
            .expect("the proxy subscribes in time")
            .expect("the fake operator runs")
    }
}

impl Drop for FakeOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
