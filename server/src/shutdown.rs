//! Ending connections: the signal that asks for it, and waiting for them to close.

use std::pin::pin;
use std::sync::atomic::Ordering;

use crate::limits::Counters;

/// Resolves when the process is asked to stop: SIGTERM (what `kill`, systemd, Docker and
/// Kubernetes send) or SIGINT (Ctrl-C). The one-line hook for a graceful shutdown:
///
/// ```no_run
/// # async fn run(hub: tidings_core::Hub, listener: tokio::net::TcpListener, app: axum::Router) {
/// tidings_server::Server::new(app)
///     .serve(listener, async move {
///         tidings_server::shutdown_signal().await;
///         hub.shutdown(); // SSE streams get a jittered `retry:` and end; long-polls answer
///     })
///     .await
///     .unwrap();
/// # }
/// ```
///
/// It works the same in axum's `with_graceful_shutdown`.
///
/// If a signal handler cannot be installed, it waits for the other signal only.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves once no admitted connection is open.
pub(crate) async fn all_closed(stats: &Counters) {
    loop {
        let mut closed = pin!(stats.closed.notified());
        closed.as_mut().enable();
        if stats.open.load(Ordering::Acquire) == 0 && stats.streams.load(Ordering::Acquire) == 0 {
            return;
        }
        closed.await;
    }
}
