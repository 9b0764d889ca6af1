//! Hot reload of the limits directory: file changes (and SIGHUP) trigger a
//! full re-read; a directory that reads without error replaces the limits in
//! force atomically, one with any error is logged and ignored, so the old
//! limits stay in force. Requests never wait on a reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::load_limits_dir;
use crate::limiter::RateLimiter;

/// What the last reload did; observable through [`LimitsWatcher::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads attempted since start.
    pub attempts: u64,
    /// Successful loads since start, the initial one included.
    pub generation: u64,
    /// Every problem of the last failed attempt, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Watches a limits directory and keeps a [`RateLimiter`]'s limits current.
#[derive(Debug)]
pub struct LimitsWatcher {
    status: watch::Receiver<ReloadStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl LimitsWatcher {
    /// Starts watching `dir`; the limiter is assumed to hold `dir`'s current
    /// limits (generation 1). Stops when `shutdown` is cancelled.
    ///
    /// # Errors
    /// When the directory cannot be watched.
    pub fn spawn(
        dir: PathBuf,
        limiter: RateLimiter,
        debounce: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, notify::Error> {
        let changed = Arc::new(Notify::new());
        let on_event = changed.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading a file does not change it; everything else might.
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    on_event.notify_one();
                }
            })?;
        watcher.watch(&dir, RecursiveMode::Recursive)?;

        let (tx, status) = watch::channel(ReloadStatus {
            attempts: 0,
            generation: 1,
            last_error: None,
        });
        let task = tokio::spawn(async move {
            // The watcher stops when dropped; keep it for the task's life.
            let _watcher = watcher;
            let mut hangup = hangup_signal();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = changed.notified() => {
                        // Coalesce a burst of events (an editor's write, rename, chmod).
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(debounce) => {}
                        }
                    }
                    Some(()) = recv_hangup(&mut hangup) => {
                        tracing::info!("SIGHUP: reloading limits");
                    }
                }
                reload(&dir, &limiter, &tx).await;
            }
        });
        Ok(Self { status, task })
    }

    /// A receiver of reload results, changed after every attempt.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }

    /// Waits for the watcher task to end (after shutdown).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

async fn reload(dir: &std::path::Path, limiter: &RateLimiter, tx: &watch::Sender<ReloadStatus>) {
    let path = dir.to_path_buf();
    let result = tokio::task::spawn_blocking(move || load_limits_dir(&path)).await;
    let mut status = tx.borrow().clone();
    status.attempts += 1;
    match result {
        Ok(Ok(limits)) => {
            tracing::info!(domains = ?limits.domain_names(), "limits reloaded");
            limiter.set_limits(limits);
            status.generation += 1;
            status.last_error = None;
        }
        Ok(Err(errors)) => {
            for e in &errors.0 {
                tracing::error!(error = %e, "limits reload rejected; the previous limits stay in force");
            }
            status.last_error = Some(errors.to_string());
        }
        Err(join_error) => {
            tracing::error!(error = %join_error, "limits reload failed");
            status.last_error = Some(join_error.to_string());
        }
    }
    tx.send_replace(status);
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(
            |e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on file changes only"),
        )
        .ok()
}

#[cfg(unix)]
async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}
