use super::*;
use crate::mapping::watch::DEBOUNCE;
use std::time::Duration;

const QUEUE: &str = "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d";

fn mapping(title: &str) -> String {
    format!("verify: {{scheme: none}}\nrules:\n  - {{name: r, queue: {QUEUE}, title: '{title}'}}\n")
}

/// A directory holding `files`, its set loaded as at startup, and a reloader for it.
fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Arc<ArcSwap<MappingSet>>, MappingReloader) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let set = MappingSet::load_dir(dir.path(), &Env::default()).unwrap();
    let current = Arc::new(ArcSwap::from_pointee(set));
    let reloader = MappingReloader::new(dir.path().to_path_buf(), Env::default(), current.clone());
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
    let (dir, current, reloader) = setup(&[("a.yaml", &mapping("A")), ("b.yaml", &mapping("B"))]);
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
    let (dir, current, reloader) = setup(&[("a.yaml", &mapping("A")), ("b.yml", &mapping("B"))]);
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
