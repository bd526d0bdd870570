//! Hot reload of the mapping directory, on file changes and on SIGHUP.
//!
//! Invariants:
//! - A reload compiles the whole directory ([`MappingSet::load_dir`]) before anything changes;
//!   only a set in which every file compiled replaces the serving one, with one
//!   `ArcSwap::store`. A request holds the `Arc` of the set it started with, so it never sees a
//!   half-loaded set, and a reload never changes a mapping under a running request.
//! - A broken file changes nothing that serves: the previous good set stays, every error line
//!   is logged (`tracing::error!`) and the latest one is kept in [`ReloadStatus::last_error`]
//!   until a reload succeeds again.
//! - Reloads never overlap (a mutex serializes them), so the newest set on disk always wins.
//! - Bursts of file events (an editor's save is often delete + create + modify + attrib) are
//!   debounced: a reload starts once the directory has been quiet for [`DEBOUNCE`], and at the
//!   latest [`MAX_SETTLE`] after the first event. Access events (including the reloader's own
//!   reads) are ignored.
//!
//! The watch is on the directory, not on each file, so added files are seen; Kubernetes
//! ConfigMap volumes (files are symlinks through a `..data` link swapped atomically) work too.
//! If the directory itself is replaced (renamed over), the watch is lost: send SIGHUP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::set::SourceVersion;
use super::{MappingLoadError, MappingSet};
use crate::env::Env;

/// How long the directory must be quiet after a file event before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// The longest a stream of events can postpone a reload.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// What readiness and admin endpoints show about reloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReloadStatus {
    /// When the set now serving was loaded, in milliseconds since the Unix epoch. The set
    /// loaded at startup counts.
    pub last_ok_at_ms: Option<u64>,
    /// When the latest failed reload was attempted.
    pub last_error_at_ms: Option<u64>,
    /// Every error of the latest reload, one per line, when that reload failed; `None` once a
    /// reload succeeds again. While set, the previous good set is still serving.
    pub last_error: Option<String>,
    /// Reloads that replaced the set (the startup load is not counted).
    pub reloads_ok: u64,
    /// Reloads refused because a file failed to load.
    pub reloads_failed: u64,
    /// Source → file and version of the set now serving.
    pub sources: BTreeMap<String, SourceVersion>,
    /// `source: key` for every rule of the serving set that names an API key not configured
    /// (its cases stay buffered until the key is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unconfigured_api_keys: Vec<String>,
}

/// Why a reload was started, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Signal,
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file_change",
            Trigger::Signal => "sighup",
            Trigger::Manual => "manual",
        }
    }
}

/// Reloads one mapping directory into the shared set that requests read.
pub struct MappingReloader {
    dir: PathBuf,
    env: Env,
    current: Arc<ArcSwap<MappingSet>>,
    status: ArcSwap<ReloadStatus>,
    /// Serializes reloads.
    reloading: Mutex<()>,
    /// The weak sources already warned about, so a reload repeats no warning.
    warned: Mutex<std::collections::BTreeMap<String, String>>,
    allow_default_secrets: bool,
    /// Names of the configured API keys (`duvo.api_keys`), which rules may name.
    api_keys: Vec<String>,
}

impl MappingReloader {
    /// A reloader for `dir` that stores into `current`, which holds the set loaded at startup
    /// (its sources are the initial status).
    pub fn new(dir: PathBuf, env: Env, current: Arc<ArcSwap<MappingSet>>) -> Self {
        let status = ReloadStatus {
            last_ok_at_ms: Some(now_ms()),
            sources: current.load().versions(),
            ..ReloadStatus::default()
        };
        let warned = current.load().weaknesses();
        MappingReloader {
            dir,
            env,
            current,
            warned: Mutex::new(warned),
            status: ArcSwap::from_pointee(status),
            reloading: Mutex::new(()),
            allow_default_secrets: false,
            api_keys: Vec::new(),
        }
    }

    /// The configured API key names (`duvo.api_keys`): every load checks that the rules name
    /// only these. Checks the serving set at once.
    pub fn with_api_keys(mut self, names: Vec<String>) -> Self {
        let missing = self.current.load().report_unconfigured_api_keys(&names);
        self.status.store(Arc::new(ReloadStatus {
            unconfigured_api_keys: missing,
            ..ReloadStatus::clone(&self.status.load())
        }));
        self.api_keys = names;
        self
    }

    /// Whether reloaded sources may run on development default secrets (only for the log and
    /// gauge; ingest enforces it).
    pub fn with_default_secrets_allowed(mut self, allow: bool) -> Self {
        self.allow_default_secrets = allow;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot of the reload status.
    pub fn status(&self) -> ReloadStatus {
        ReloadStatus::clone(&self.status.load())
    }

    /// Compiles the directory and, when every file loads, swaps the new set in. Returns the
    /// number of sources now serving, or every load error (the previous set keeps serving).
    pub fn reload_now(&self) -> Result<usize, Vec<MappingLoadError>> {
        self.reload(Trigger::Manual)
    }

    /// [`Self::reload_now`], logging `trigger`.
    pub fn reload(&self, trigger: Trigger) -> Result<usize, Vec<MappingLoadError>> {
        let _serialized = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = self.dir.display().to_string();
        match MappingSet::load_dir(&self.dir, &self.env) {
            Ok(set) => {
                let sources = set.versions();
                let before = self.status.load().sources.clone();
                let change = Change::between(&before, &sources);
                {
                    let mut warned = self
                        .warned
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    *warned = set.warn_about_weak_sources_once(&warned);
                }
                crate::prometheus::register_zeros(&set, &[]);
                set.report_source_configuration(self.allow_default_secrets);
                let unconfigured_api_keys = set.report_unconfigured_api_keys(&self.api_keys);
                let n = set.len();
                // After a refused reload, success is news even when the set is as before.
                let recovered = self.status.load().last_error.is_some();
                self.current.store(Arc::new(set));
                metrics::counter!(crate::prometheus::MAPPING_RELOADS, "result" => "ok")
                    .increment(1);
                let previous = self.status.load();
                self.status.store(Arc::new(ReloadStatus {
                    last_ok_at_ms: Some(now_ms()),
                    last_error_at_ms: previous.last_error_at_ms,
                    last_error: None,
                    reloads_ok: previous.reloads_ok + 1,
                    reloads_failed: previous.reloads_failed,
                    sources,
                    unconfigured_api_keys,
                }));
                if change.is_empty() && trigger == Trigger::FileChange && !recovered {
                    tracing::debug!(%dir, sources = n, "mappings reloaded, nothing changed");
                } else {
                    tracing::info!(
                        %dir,
                        trigger = trigger.as_str(),
                        sources = n,
                        added = ?change.added,
                        removed = ?change.removed,
                        changed = ?change.changed,
                        "mappings reloaded"
                    );
                }
                Ok(n)
            }
            Err(errors) => {
                metrics::counter!(crate::prometheus::MAPPING_RELOADS, "result" => "failed")
                    .increment(1);
                for error in &errors {
                    tracing::error!(%dir, %error, "mapping file failed to load");
                }
                tracing::error!(
                    %dir,
                    trigger = trigger.as_str(),
                    errors = errors.len(),
                    "mapping reload refused; the previous mappings keep serving"
                );
                let previous = self.status.load();
                self.status.store(Arc::new(ReloadStatus {
                    last_error_at_ms: Some(now_ms()),
                    last_error: Some(
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
                    reloads_failed: previous.reloads_failed + 1,
                    ..ReloadStatus::clone(&previous)
                }));
                Err(errors)
            }
        }
    }

    /// Starts watching the directory and listening for SIGHUP; each trigger reloads. Both are
    /// set up before this returns, so a SIGHUP sent afterwards is never the default "terminate".
    /// Must be called within a Tokio runtime. The task stops when the returned handle is
    /// dropped (or [`ReloadTask::stop`]ped). A watcher that cannot start (e.g. the inotify
    /// limit) is logged and SIGHUP still works.
    pub fn spawn(self: Arc<Self>) -> ReloadTask {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = match watch(&self.dir, tx) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "cannot watch the mapping directory; reload with SIGHUP");
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

/// Sources added, removed and changed (new file or version) by a reload.
#[derive(Debug, Default)]
struct Change {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

impl Change {
    fn between(
        before: &BTreeMap<String, SourceVersion>,
        after: &BTreeMap<String, SourceVersion>,
    ) -> Change {
        let mut change = Change::default();
        for (source, version) in after {
            match before.get(source) {
                None => change.added.push(source.clone()),
                Some(old) if old != version => change.changed.push(source.clone()),
                Some(_) => {}
            }
        }
        change.removed = before
            .keys()
            .filter(|s| !after.contains_key(*s))
            .cloned()
            .collect();
        change
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: &str = "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d";

    fn mapping(title: &str) -> String {
        format!(
            "verify: {{scheme: none}}\nrules:\n  - {{name: r, queue: {QUEUE}, title: '{title}'}}\n"
        )
    }

    /// A directory holding `files`, its set loaded as at startup, and a reloader for it.
    fn setup(
        files: &[(&str, &str)],
    ) -> (tempfile::TempDir, Arc<ArcSwap<MappingSet>>, MappingReloader) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let set = MappingSet::load_dir(dir.path(), &Env::default()).unwrap();
        let current = Arc::new(ArcSwap::from_pointee(set));
        let reloader =
            MappingReloader::new(dir.path().to_path_buf(), Env::default(), current.clone());
        (dir, current, reloader)
    }

    fn sources(current: &ArcSwap<MappingSet>) -> Vec<String> {
        current.load().iter().map(|m| m.source.clone()).collect()
    }

    #[test]
    fn the_initial_status_describes_the_startup_set() {
        let (_dir, _current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        let status = reloader.status();
        assert!(status.last_ok_at_ms.is_some());
        assert_eq!((status.reloads_ok, status.reloads_failed), (0, 0));
        assert_eq!(status.last_error, None);
        assert_eq!(status.sources["a"].file, "a.yaml");
        assert_eq!(status.sources["a"].version.len(), 12);
    }

    #[test]
    fn an_edited_file_is_swapped_in() {
        let (dir, current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        let before = current.load_full();
        let old_version = reloader.status().sources["a"].version.clone();
        std::fs::write(dir.path().join("a.yaml"), mapping("edited")).unwrap();
        assert_eq!(reloader.reload_now(), Ok(1));
        let after = current.load_full();
        assert!(!Arc::ptr_eq(&before, &after), "a new set was stored");
        assert_ne!(
            after.get("a").unwrap().version,
            before.get("a").unwrap().version
        );
        let status = reloader.status();
        assert_eq!(status.reloads_ok, 1);
        assert_ne!(status.sources["a"].version, old_version);
        assert_eq!(status.sources["a"].version, after.get("a").unwrap().version);
    }

    #[test]
    fn a_broken_file_keeps_the_previous_set_and_records_every_error() {
        let (dir, current, reloader) =
            setup(&[("a.yaml", &mapping("A")), ("b.yaml", &mapping("B"))]);
        let before = current.load_full();
        std::fs::write(
            dir.path().join("a.yaml"),
            "verify: {scheme: none}\nrules: [\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yaml"), mapping("{{ $.unclosed")).unwrap();
        std::fs::write(dir.path().join("c.yaml"), mapping("C")).unwrap();
        let errors = reloader.reload_now().unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            Arc::ptr_eq(&before, &current.load_full()),
            "the old set still serves"
        );
        assert_eq!(
            sources(&current),
            ["a", "b"],
            "c is not added by a failed reload"
        );
        let status = reloader.status();
        assert_eq!((status.reloads_ok, status.reloads_failed), (0, 1));
        let error = status.last_error.clone().unwrap();
        assert!(
            error.contains("a.yaml:") && error.contains("b.yaml: rule `r`: title"),
            "{error}"
        );
        assert_eq!(error.lines().count(), 2, "one line per error: {error}");
        assert!(status.last_error_at_ms.is_some());
        assert_eq!(status.sources.keys().collect::<Vec<_>>(), ["a", "b"]);

        std::fs::write(dir.path().join("a.yaml"), mapping("A2")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), mapping("B2")).unwrap();
        assert_eq!(reloader.reload_now(), Ok(3));
        let status = reloader.status();
        assert_eq!(status.last_error, None, "a good reload clears the error");
        assert_eq!((status.reloads_ok, status.reloads_failed), (1, 1));
        assert_eq!(sources(&current), ["a", "b", "c"]);
    }

    #[test]
    fn a_removed_file_removes_its_source_and_an_added_file_adds_one() {
        let (dir, current, reloader) =
            setup(&[("a.yaml", &mapping("A")), ("b.yml", &mapping("B"))]);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_eq!(reloader.reload_now(), Ok(1));
        assert_eq!(sources(&current), ["b"]);
        std::fs::write(dir.path().join("new-source.yaml"), mapping("N")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a mapping").unwrap();
        assert_eq!(reloader.reload_now(), Ok(2));
        assert_eq!(sources(&current), ["b", "new-source"]);
        assert_eq!(
            reloader.status().sources.keys().collect::<Vec<_>>(),
            ["b", "new-source"]
        );
    }

    #[test]
    fn a_request_keeps_the_set_it_started_with() {
        let (dir, current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        let in_flight = current.load_full();
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), mapping("B")).unwrap();
        reloader.reload_now().unwrap();
        assert_eq!(sources(&current), ["b"]);
        assert!(
            !Arc::ptr_eq(&in_flight, &current.load_full()),
            "a reload stores a new set"
        );
        assert_eq!(
            in_flight
                .iter()
                .map(|m| m.source.as_str())
                .collect::<Vec<_>>(),
            ["a"],
            "the set a running request holds is not changed under it"
        );
    }

    #[test]
    fn every_reload_checks_that_rules_name_only_configured_api_keys() {
        let keyed = |key: &str| {
            format!(
                "verify: {{scheme: none}}\nrules:\n  - {{name: r, queue: {QUEUE}, title: 'T', api_key: {key}}}\n"
            )
        };
        let (dir, _current, reloader) = setup(&[("a.yaml", &keyed("eu"))]);
        let reloader = reloader.with_api_keys(vec!["eu".to_string()]);
        assert!(reloader.status().unconfigured_api_keys.is_empty());
        std::fs::write(dir.path().join("b.yaml"), keyed("us")).unwrap();
        let log = logged(|| {
            reloader.reload_now().unwrap();
        });
        assert_eq!(reloader.status().unconfigured_api_keys, ["b: us"]);
        assert!(
            log.contains("a rule names an API key that is not configured")
                && log.contains("key=\"us\""),
            "{log}"
        );
        std::fs::write(dir.path().join("b.yaml"), keyed("eu")).unwrap();
        reloader.reload_now().unwrap();
        assert!(reloader.status().unconfigured_api_keys.is_empty());
    }

    #[test]
    fn a_vanished_directory_is_an_error_not_an_empty_set() {
        let (dir, current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        assert!(reloader.reload_now().is_err());
        assert_eq!(sources(&current), ["a"]);
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// A SIGHUP reaches every reloader in the process: tests that count reloads run alone.
    static SIGNALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn the_watcher_reloads_after_files_change() {
        let _alone = SIGNALS.lock().await;
        let (dir, current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        let reloader = Arc::new(reloader);
        let task = reloader.clone().spawn();
        // A burst of writes becomes one reload once the directory is quiet.
        for i in 0..5 {
            std::fs::write(dir.path().join("b.yaml"), mapping(&format!("B{i}"))).unwrap();
        }
        eventually("b is served", || sources(&current) == ["a", "b"]).await;
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(reloader.status().reloads_ok, 1, "the burst was debounced");

        std::fs::write(dir.path().join("a.yaml"), "rules: [").unwrap();
        eventually("the failure is recorded", || {
            reloader.status().reloads_failed == 1
        })
        .await;
        assert_eq!(sources(&current), ["a", "b"]);

        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        eventually("a is removed", || sources(&current) == ["b"]).await;
        assert_eq!(reloader.status().last_error, None);
        task.stop().await;
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_reloads() {
        let _alone = SIGNALS.lock().await;
        let (dir, current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        let reloader = Arc::new(reloader);
        // `spawn` installs the SIGHUP handler before it returns, so the signal cannot kill the
        // test process.
        let task = reloader.clone().spawn();
        let before = reloader.status().reloads_ok;
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        eventually("a reload happened", || {
            reloader.status().reloads_ok > before
        })
        .await;
        assert_eq!(sources(&current), ["a"]);
        task.stop().await;
        drop(dir);
    }

    /// Runs `f` with a subscriber that writes every event (debug and up, no colours) to a string.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn an_unauthenticated_source_is_warned_about_once_not_on_every_reload() {
        let (dir, _current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        let log = logged(|| {
            reloader.reload(Trigger::FileChange).unwrap();
            reloader.reload(Trigger::FileChange).unwrap();
        });
        assert!(!log.contains("unauthenticated"), "{log}");
        // A new weak source is news, once.
        std::fs::write(dir.path().join("b.yaml"), mapping("B")).unwrap();
        let log = logged(|| {
            reloader.reload(Trigger::FileChange).unwrap();
            reloader.reload(Trigger::FileChange).unwrap();
        });
        assert_eq!(log.matches("unauthenticated").count(), 1, "{log}");
        assert!(log.contains("source=b"), "{log}");
    }

    #[test]
    fn a_fixed_mapping_after_a_refused_reload_logs_its_success_at_info() {
        let (dir, _current, reloader) = setup(&[("a.yaml", &mapping("A"))]);
        std::fs::write(dir.path().join("a.yaml"), "rules: [").unwrap();
        assert!(reloader.reload(Trigger::FileChange).is_err());
        // Back to the very file that serves: nothing changed, yet the recovery is news.
        std::fs::write(dir.path().join("a.yaml"), mapping("A")).unwrap();
        let log = logged(|| {
            reloader.reload(Trigger::FileChange).unwrap();
        });
        assert!(
            log.lines()
                .any(|l| l.contains("INFO") && l.contains("mappings reloaded")),
            "{log}"
        );
        // And a later no-change reload stays at debug.
        let log = logged(|| {
            reloader.reload(Trigger::FileChange).unwrap();
        });
        assert!(!log.contains("INFO"), "{log}");
    }
}
