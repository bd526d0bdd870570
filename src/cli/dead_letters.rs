//! `casegate dlq`: list, show, replay and purge dead letters, on the buffer itself or through a
//! running gateway's admin API.

use super::*;

pub(super) async fn dlq(config_file: Option<PathBuf>, action: DlqAction) -> Result<(), CliError> {
    let config = load_config(config_file.as_deref(), &Overrides::default())?;
    let buffer = match crate::buffer::Buffer::open(&config.buffer).await {
        Ok(buffer) => buffer,
        // The embedded store is held by a running gateway: ask that gateway instead.
        Err(error) => {
            return match AdminApi::from_config(&config, None) {
                Ok(admin) => dlq_remote(&admin, action).await,
                Err(_) => Err(format!(
                    "{error} (with the embedded buffer, stop the gateway first or give the CLI \
                     the gateway's admin token, CASEGATE_ADMIN__TOKEN)"
                )
                .into()),
            };
        }
    };
    match action {
        DlqAction::List { source, limit } => {
            let letters = dlq::list(&buffer, source.as_deref(), limit).await?;
            let views: Vec<_> = letters.iter().map(DeadLetterView::summary).collect();
            print_dead_letters(&serde_json::to_value(views).unwrap_or_default());
        }
        DlqAction::Show { id } => {
            let letter = dlq::show(&buffer, &id).await?;
            out!("{}", pretty(&DeadLetterView::full(&letter)));
        }
        DlqAction::Replay {
            id,
            all,
            source,
            dry_run,
        } => {
            let mappings = load_mapping_set(&config)?;
            let remap = remap(&config);
            match (selected(id, all, source.as_deref())?, dry_run) {
                (Some(id), true) => {
                    let letter = dlq::show(&buffer, &id).await?;
                    let mapping = mappings.get(&letter.record.source);
                    let preview = dlq::preview(&letter, mapping.map(|m| m.as_ref()), &remap);
                    print_previews(&[serde_json::to_value(preview).unwrap_or_default()]);
                }
                (None, true) => {
                    let mut tally = PreviewTally::default();
                    let mut after: Option<String> = None;
                    loop {
                        let page = dlq::preview_page(
                            &buffer,
                            &mappings,
                            &remap,
                            source.as_deref(),
                            after.as_deref(),
                            dlq::PAGE,
                        )
                        .await?;
                        tally.print(&json_values(&page.dry_run));
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                    tally.finish();
                }
                (Some(id), false) => {
                    let outcome = dlq::replay(&buffer, &mappings, &remap, &id).await?;
                    out!("{}", pretty(&outcome));
                }
                (None, false) => {
                    let outcomes = dlq::replay_all(
                        &buffer,
                        &mappings,
                        &remap,
                        source.as_deref(),
                        |done, total, outcome| {
                            eprintln!(
                                "[{done}/{total}] {}",
                                serde_json::to_string(outcome).unwrap_or_default()
                            );
                        },
                    )
                    .await?;
                    print_replayed(&json_values(&outcomes));
                }
            }
        }
        DlqAction::Purge { id, all, source } => {
            let ids: Vec<String> = match selected(id, all, source.as_deref())? {
                Some(id) => vec![id],
                None => Vec::new(),
            };
            let removed = dlq::purge(&buffer, &ids, source.as_deref()).await?;
            out!("purged {removed} dead letter(s)");
        }
    }
    Ok(buffer.flush().await?)
}

/// The dead letter a replay or purge names: `Some(id)` for one, `None` for every one (of
/// `--source`); an id together with `--all`/`--source`, or neither, is a usage error.
fn selected(
    id: Option<String>,
    all: bool,
    source: Option<&str>,
) -> Result<Option<String>, CliError> {
    match (id, all || source.is_some()) {
        (Some(id), false) => Ok(Some(id)),
        (None, true) => Ok(None),
        _ => Err("give a dead-letter id, or --all, or --source SOURCE".into()),
    }
}

/// Each item as JSON, for the printers that take what the local store and the admin API answer
/// alike.
pub(super) fn json_values<T: serde::Serialize>(items: &[T]) -> Vec<serde_json::Value> {
    items
        .iter()
        .map(|item| serde_json::to_value(item).unwrap_or_default())
        .collect()
}

/// `casegate dlq` through a running gateway's admin API (the embedded store allows one process).
pub(super) async fn dlq_remote(admin: &AdminApi, action: DlqAction) -> Result<(), CliError> {
    let query = |source: &Option<String>, extra: &[(&str, String)]| {
        let mut pairs: Vec<(&str, String)> = extra.to_vec();
        if let Some(source) = source {
            pairs.push(("source", source.clone()));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    match action {
        DlqAction::List { source, limit } => {
            let answer = admin
                .call(
                    "GET",
                    &format!(
                        "/admin/dlq?{}",
                        query(&source, &[("limit", limit.to_string())])
                    ),
                )
                .await?;
            print_dead_letters(&answer["dead_letters"]);
        }
        DlqAction::Show { id } => {
            let answer = admin
                .call("GET", &format!("/admin/dlq/{}", path_segment(&id)))
                .await?;
            out!("{}", pretty(&answer));
        }
        DlqAction::Replay {
            id,
            all,
            source,
            dry_run,
        } => {
            let dry = if dry_run { "?dry_run=true" } else { "" };
            match selected(id, all, source.as_deref())? {
                Some(id) => {
                    let answer = admin
                        .call(
                            "POST",
                            &format!("/admin/dlq/{}/replay{dry}", path_segment(&id)),
                        )
                        .await?;
                    if dry_run {
                        print_previews(&[answer]);
                    } else {
                        out!("{}", pretty(&answer));
                    }
                }
                None if dry_run => {
                    // Page by page, so neither side holds the whole store's previews.
                    let mut tally = PreviewTally::default();
                    let mut after: Option<String> = None;
                    loop {
                        let mut extra = vec![("dry_run", "true".to_string())];
                        extra.extend(after.take().map(|a| ("after", a)));
                        let answer = admin
                            .call(
                                "POST",
                                &format!("/admin/dlq/replay?{}", query(&source, &extra)),
                            )
                            .await?;
                        tally.print(&answer["dry_run"].as_array().cloned().unwrap_or_default());
                        match answer["next"].as_str() {
                            Some(next) => after = Some(next.to_string()),
                            None => break,
                        }
                    }
                    tally.finish();
                }
                None => {
                    let answer = admin
                        .call(
                            "POST",
                            &format!("/admin/dlq/replay?{}", query(&source, &[])),
                        )
                        .await?;
                    print_replayed(&answer["replayed"].as_array().cloned().unwrap_or_default());
                }
            }
        }
        DlqAction::Purge { id, all, source } => {
            let answer = match selected(id, all, source.as_deref())? {
                Some(id) => {
                    admin
                        .call("DELETE", &format!("/admin/dlq/{}", path_segment(&id)))
                        .await?
                }
                None => {
                    admin
                        .call("DELETE", &format!("/admin/dlq?{}", query(&source, &[])))
                        .await?
                }
            };
            out!("purged {} dead letter(s)", answer["purged"]);
        }
    }
    Ok(())
}

/// Dead-letter summaries (as JSON), one line each.
pub(super) fn print_dead_letters(views: &serde_json::Value) {
    let views = views.as_array().cloned().unwrap_or_default();
    if views.is_empty() {
        out!("the dead-letter store is empty");
    }
    let text = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    for view in &views {
        out!(
            "{:<22} {:<16} {:<16} {}",
            text(view, "id"),
            text(view, "source"),
            text(view, "kind"),
            text(view, "reason")
        );
    }
}

/// The summary line of a replay.
pub(super) fn print_replayed(outcomes: &[serde_json::Value]) {
    let failing = outcomes
        .iter()
        .filter(|o| o["result"] == "still_failing")
        .count();
    out!(
        "replayed {} dead letter(s); {failing} still failing",
        outcomes.len()
    );
}

/// Dry-run previews, per dead letter: the cases it would enqueue, or why it would still fail.
pub(super) fn print_previews(previews: &[serde_json::Value]) {
    let mut tally = PreviewTally::default();
    tally.print(previews);
    tally.finish();
}

/// Prints dry-run previews as they arrive (a page at a time) and counts them for the summary.
#[derive(Default)]
pub(super) struct PreviewTally {
    enqueue: usize,
    filtered: usize,
    failing: usize,
}

impl PreviewTally {
    fn print(&mut self, previews: &[serde_json::Value]) {
        for preview in previews {
            let id = preview["id"].as_str().unwrap_or_default();
            match preview["result"].as_str().unwrap_or_default() {
                "would_enqueue" => {
                    self.enqueue += 1;
                    let cases = preview["cases"].as_array().cloned().unwrap_or_default();
                    out!("{id}: would enqueue {} case(s):", cases.len());
                    out!("{}", pretty(&cases));
                }
                "would_filter" => {
                    self.filtered += 1;
                    out!(
                        "{id}: no rule matches any more; the dead letter would be removed, no case made"
                    );
                }
                _ => {
                    self.failing += 1;
                    out!(
                        "{id}: would still fail: {}",
                        preview["reason"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }

    fn finish(self) {
        let Self {
            enqueue,
            filtered,
            failing,
        } = self;
        out!(
            "dry run over {} dead letter(s): {enqueue} would enqueue, {filtered} would be filtered out, \
             {failing} would still fail; nothing was written",
            enqueue + filtered + failing
        );
    }
}

#[cfg(test)]
mod tests {
    use super::selected;

    #[test]
    fn a_replay_or_a_purge_names_one_dead_letter_or_all_of_them_never_both_nor_neither() {
        assert_eq!(
            selected(Some("7".into()), false, None).unwrap(),
            Some("7".into())
        );
        assert_eq!(selected(None, true, None).unwrap(), None);
        assert_eq!(selected(None, false, Some("github")).unwrap(), None);
        assert!(selected(Some("7".into()), true, None).is_err());
        assert!(selected(Some("7".into()), false, Some("github")).is_err());
        assert!(selected(None, false, None).is_err());
    }
}
