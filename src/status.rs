//! What `casegate status` and `GET /admin/status` report: per source and per queue, what is
//! buffered, how fast it leaves, what is paused and the last error.

use serde::{Deserialize, Serialize};

use crate::buffer::{Buffer, BufferError};
use crate::clock::now_ms;
use crate::delivery::Delivery;
use crate::mapping::MappingSet;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    pub file: String,
    pub version: String,
    pub scheme: String,
    /// True while a secret falls back to its development default.
    pub default_secret: bool,
    /// False when the source is refused (503 `source_not_configured`): it runs on a development
    /// default outside development mode.
    #[serde(default = "configured_by_default")]
    pub configured: bool,
    /// The variables to set so the source stops running on development defaults.
    #[serde(default)]
    pub unset_variables: Vec<String>,
}

fn configured_by_default() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueStatus {
    pub queue: String,
    pub depth: u64,
    pub claimed: u64,
    pub oldest_age_secs: Option<f64>,
    pub delivered_last_minute: u64,
    pub delivered_total: u64,
    pub paused_for_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PausedKey {
    pub key: String,
    pub for_ms: u64,
    /// Why: a 429 (or a spent window) or a 401/403, as the pause table holds it.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub delivery_running: bool,
    pub sources: Vec<SourceStatus>,
    pub queues: Vec<QueueStatus>,
    pub paused_keys: Vec<PausedKey>,
    pub dead_letters: usize,
    /// The last mapping reload: when, and the error that kept the previous set serving.
    #[serde(default)]
    pub mappings: Option<crate::mapping::ReloadStatus>,
}

/// Gathers the report; the buffer is read, nothing is changed.
pub async fn report(
    buffer: &Buffer,
    mappings: &MappingSet,
    delivery: Option<&Delivery>,
    allow_default_secrets: bool,
) -> Result<StatusReport, BufferError> {
    let sources = mappings
        .iter()
        .map(|m| SourceStatus {
            source: m.source.clone(),
            file: m.file.clone(),
            version: m.version.clone(),
            scheme: m.verifier.scheme_name().to_string(),
            default_secret: m.verifier.uses_default_secret(),
            configured: allow_default_secrets || !m.verifier.uses_default_secret(),
            unset_variables: m.verifier.defaulted_variables().to_vec(),
        })
        .collect();
    let activity = match delivery {
        Some(d) => d.activity().await,
        None => Vec::new(),
    };
    let mut queue_names = buffer.queues().await?;
    queue_names.extend(activity.iter().map(|a| a.queue.clone()));
    queue_names.sort();
    queue_names.dedup();
    let now = now_ms();
    let mut queues = Vec::with_capacity(queue_names.len());
    for queue in queue_names {
        let stats = buffer.stats(&queue).await?;
        let seen = activity.iter().find(|a| a.queue == queue);
        queues.push(QueueStatus {
            depth: stats.depth,
            claimed: stats.claimed,
            oldest_age_secs: stats
                .oldest_received_at_ms
                .map(|at| now.saturating_sub(at) as f64 / 1000.0),
            delivered_last_minute: seen.map_or(0, |a| a.delivered_last_minute),
            delivered_total: seen.map_or(0, |a| a.delivered_total),
            paused_for_ms: seen.and_then(|a| a.paused_for_ms),
            last_error: seen.and_then(|a| a.last_error.clone()),
            queue,
        });
    }
    let paused_keys = match delivery {
        Some(d) => d
            .pauses()
            .await
            .into_iter()
            .filter_map(|p| {
                Some(PausedKey {
                    key: p.name.strip_prefix("key:")?.to_string(),
                    for_ms: p.remaining_ms,
                    reason: p.reason,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    // Counted, not loaded: the store may hold thousands of letters of up to a body's size each.
    let dead_letters = usize::try_from(buffer.count_dead_letters().await?).unwrap_or(usize::MAX);
    Ok(StatusReport {
        delivery_running: delivery.is_some(),
        sources,
        queues,
        paused_keys,
        dead_letters,
        mappings: None,
    })
}

/// The report as a terminal table.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "delivery: {}    dead letters: {}\n\n",
        if report.delivery_running {
            "running"
        } else {
            "off (no API key or disabled)"
        },
        report.dead_letters
    ));
    out.push_str(&format!(
        "{:<22} {:<20} {:<18} {:<13} {}\n",
        "SOURCE", "FILE", "SCHEME", "VERSION", "NOTE"
    ));
    for s in &report.sources {
        let note = if !s.configured {
            format!("NOT SERVED (503): set {}", s.unset_variables.join(", "))
        } else if s.default_secret {
            "development default secret".to_string()
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:<22} {:<20} {:<18} {:<13} {note}\n",
            s.source, s.file, s.scheme, s.version
        ));
    }
    out.push_str(&format!(
        "\n{:<38} {:>7} {:>7} {:>10} {:>9} {:>9} {:<8} {}\n",
        "QUEUE", "DEPTH", "CLAIMED", "OLDEST", "SENT/MIN", "SENT", "STATE", "LAST ERROR"
    ));
    for q in &report.queues {
        let oldest = q
            .oldest_age_secs
            .map_or("-".to_string(), |s| format!("{s:.1}s"));
        let state = if q.paused_for_ms.is_some() {
            "paused"
        } else {
            "ok"
        };
        out.push_str(&format!(
            "{:<38} {:>7} {:>7} {:>10} {:>9} {:>9} {:<8} {}\n",
            q.queue,
            q.depth,
            q.claimed,
            oldest,
            q.delivered_last_minute,
            q.delivered_total,
            state,
            q.last_error.as_deref().unwrap_or("")
        ));
    }
    if let Some(error) = report.mappings.as_ref().and_then(|m| m.last_error.as_ref()) {
        out.push_str(&format!(
            "\nlast mapping reload failed (the previous mappings keep serving):\n{error}\n"
        ));
    }
    for key in &report.paused_keys {
        out.push_str(&format!(
            "\nAPI key {} is paused for {} ms more: {}\n",
            key.key, key.for_ms, key.reason
        ));
    }
    out
}
