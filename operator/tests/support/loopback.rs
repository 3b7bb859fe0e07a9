//! Servers a test runs on 127.0.0.1: each accepted connection served in a task of its own,
//! no more accepted once the test drops the server.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// A listener on 127.0.0.1 and the task accepting on it (aborted on drop; connections already
/// accepted run to their end).
pub struct Loopback {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Loopback {
    /// Listen on 127.0.0.1:`port` (0: a free one) and hand each accepted connection to `serve`.
    pub async fn serve<F, Fut>(port: u16, serve: F) -> Loopback
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("listening on 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("a bound listener has an address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(tcp));
            }
        });
        Loopback { addr, task }
    }
}
