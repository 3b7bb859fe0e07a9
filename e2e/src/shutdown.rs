//! The stop signal shared by the server, its watches and the controllers:
//! a `watch` channel that turns `true` once.

use tokio::sync::watch;

/// Resolves once the flag is `true` or its sender is gone.
pub async fn requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
