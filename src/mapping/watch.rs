//! Watching the mapping directory (notify) and SIGHUP: each trigger runs one
//! [`MappingReloader::reload`], on the blocking pool.
//!
//! Bursts of file events (an editor's save is often delete + create + modify + attrib) are
//! debounced: a reload starts once the directory has been quiet for [`DEBOUNCE`], and at the
//! latest [`MAX_SETTLE`] after the first event. Access events (including the reloader's own
//! reads) are ignored.
//!
//! The watch is on the directory, not on each file, so added files are seen; Kubernetes
//! ConfigMap volumes (files are symlinks through a `..data` link swapped atomically) work too.
//! If the directory itself is replaced (renamed over), the watch is lost: send SIGHUP.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::reload::{MappingReloader, Trigger};

/// How long the directory must be quiet after a file event before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// The longest a stream of events can postpone a reload.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

impl MappingReloader {
    /// Starts watching the directory and listening for SIGHUP; each trigger reloads. Both are
    /// set up before this returns, so a SIGHUP sent afterwards is never the default "terminate".
    /// Must be called within a Tokio runtime. The task stops when the returned handle is
    /// dropped (or [`ReloadTask::stop`]ped). A watcher that cannot start (e.g. the inotify
    /// limit) is logged and SIGHUP still works.
    pub fn spawn(self: Arc<Self>) -> ReloadTask {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = match watch(self.dir(), tx) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(dir = %self.dir().display(), %error, "cannot watch the mapping directory; reload with SIGHUP");
                None
            }
        };
        let hangup = hangup_signal();
        ReloadTask(Some(tokio::spawn(async move {
            // Keeps the watcher (and its thread) alive as long as the task.
            let _watcher = watcher;
            self.run(rx, hangup).await;
        })))
    }

    async fn run(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<()>, mut hangup: Hangup) {
        loop {
            let trigger = tokio::select! {
                Some(()) = events.recv() => {
                    settle(&mut events).await;
                    Trigger::FileChange
                }
                Some(()) = next_hangup(&mut hangup) => Trigger::Signal,
                else => return,
            };
            let this = self.clone();
            // Errors are logged and recorded in the status by `reload`.
            let _ = tokio::task::spawn_blocking(move || this.reload(trigger)).await;
        }
    }
}

/// The running reload task; dropping it stops watching.
#[derive(Debug)]
pub struct ReloadTask(Option<JoinHandle<()>>);

impl ReloadTask {
    /// Stops the task and waits until it has (and the watcher is closed).
    pub async fn stop(mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for ReloadTask {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Watches `dir` (not recursively), sending `()` for every event that may change a file.
fn watch(dir: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Opening and reading (the reloader's own reads among them) change nothing.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(error) => {
                tracing::warn!(%error, "mapping directory watch error");
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Waits until no event has arrived for [`DEBOUNCE`], or [`MAX_SETTLE`] has passed.
async fn settle(events: &mut mpsc::UnboundedReceiver<()>) {
    let started = Instant::now();
    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {
        if started.elapsed() >= MAX_SETTLE {
            return;
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<std::convert::Infallible>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; mappings reload on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
