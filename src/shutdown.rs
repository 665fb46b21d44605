//! Shutdown signal shared by the accept loop and every session.

use tokio::sync::watch;

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Receives the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger/receiver pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Signal every receiver.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// True once shutdown was signalled.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Wait for the signal (returns at once when already signalled). A
    /// trigger dropped without firing never signals.
    pub async fn recv(&mut self) {
        if self.0.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
