//! `casegate try`: what a mapping makes of a sample payload, or of a dead letter now.

use super::*;

/// `casegate try --dead-letter ID [MAPPING]`: the cases the dead letter would now become.
pub(super) async fn try_dead_letter(
    config_file: Option<PathBuf>,
    mapping_file: Option<PathBuf>,
    id: &str,
) -> Result<String, CliError> {
    let config = load_config(config_file.as_deref(), &Overrides::default())?;
    let letter = match crate::buffer::Buffer::open(&config.buffer).await {
        Ok(buffer) => {
            let letter = dlq::show(&buffer, id).await;
            buffer.flush().await?;
            letter?
        }
        Err(error) => {
            let admin = AdminApi::from_config(&config, None).map_err(|_| {
                format!("{error} (stop the gateway first, or give the CLI its admin token, CASEGATE_ADMIN__TOKEN)")
            })?;
            let view = admin
                .call("GET", &format!("/admin/dlq/{}", path_segment(id)))
                .await?;
            dead_letter_from_view(&view)?
        }
    };
    let mapping = match &mapping_file {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(file_error(file))?;
            Some(Arc::new(CompiledMapping::compile(
                file,
                &text,
                &config.env,
            )?))
        }
        None => load_mapping_set(&config)?
            .get(&letter.record.source)
            .cloned(),
    };
    match dlq::preview(&letter, mapping.as_deref(), &remap(&config)) {
        dlq::ReplayPreview::WouldEnqueue { cases, .. } => Ok(pretty(&cases)),
        dlq::ReplayPreview::WouldFilter { .. } => Ok(format!(
            "no rule matched: a replay of {id} would remove it and make no case"
        )),
        dlq::ReplayPreview::StillFailing { reason, .. } => Err(format!(
            "mapping failed: {reason} (a replay of {id} would leave it in the dead-letter store)"
        )
        .into()),
    }
}

/// A dead letter rebuilt from the admin API's full view of it.
pub(super) fn dead_letter_from_view(
    view: &serde_json::Value,
) -> Result<crate::case::DeadLetter, CliError> {
    let kind: crate::case::DeadLetterKind = serde_json::from_value(view["detail"].clone())
        .map_err(|e| format!("the admin API answered an unexpected dead letter: {e}"))?;
    Ok(crate::case::DeadLetter {
        id: view["id"].as_str().unwrap_or_default().to_string(),
        record: crate::case::DeadLetterRecord {
            source: view["source"].as_str().unwrap_or_default().to_string(),
            reason: view["reason"].as_str().unwrap_or_default().to_string(),
            created_at_ms: view["created_at_ms"].as_u64().unwrap_or_default(),
            kind,
        },
    })
}

/// `casegate try`: maps one payload and prints the cases as JSON.
pub fn try_mapping(
    mapping_file: &Path,
    payload_file: &Path,
    headers: &[String],
    env: &Env,
    max_event_bytes: usize,
) -> Result<String, CliError> {
    let text = std::fs::read_to_string(mapping_file).map_err(file_error(mapping_file))?;
    let mapping = CompiledMapping::compile(mapping_file, &text, env)?;
    let raw = if payload_file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read_to_string(payload_file).map_err(file_error(payload_file))?
    };
    let mut parsed = Headers::new();
    for header in headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("header {header:?} is not `Name: value`"))?;
        parsed.insert(name.trim(), value.trim());
    }
    // A sample the operator supplies on this machine: nothing to verify.
    let request = Verified::trusted_local_input(InboundRequest::local(parsed, raw));
    let origin = Origin {
        request_id: "try",
        received_at_ms: 0,
        delivery_id: DeliveryIdFrom::Event,
    };
    let mapped = mapping
        .map_event(&request, BodyFormat::Json, &origin, max_event_bytes)
        .map_err(|e| format!("{}: not JSON: {e}", payload_file.display()))?;
    let cases = mapped.cases.map_err(|e| {
        format!("mapping failed: {e} (the event would go to the dead-letter store)")
    })?;
    let parsed = &request.get().headers;
    if cases.is_empty() {
        return Ok(mapping.no_match_reason(parsed));
    }
    let shown: Vec<_> = cases.iter().map(dlq::case_preview).collect();
    Ok(serde_json::to_string_pretty(&shown).expect("JSON values serialize"))
}
