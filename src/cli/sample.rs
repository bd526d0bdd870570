//! `casegate send-sample`: signs a mapping's example like its provider and posts it.

use super::*;

pub(super) async fn send_sample(
    config_file: Option<PathBuf>,
    source: &str,
    url: Option<String>,
    example: Option<String>,
) -> Result<(), CliError> {
    let config = load_config(config_file.as_deref(), &Overrides::default())?;
    let mappings = load_mapping_set(&config)?;
    let mapping = mappings.get(source).ok_or_else(|| {
        format!(
            "no mapping for source `{source}` in {}",
            config.mappings.display()
        )
    })?;
    let sample = mapping
        .examples
        .iter()
        .find(|e| {
            example
                .as_ref()
                .map_or(e.expect_error.is_none() && !e.expect.is_empty(), |name| {
                    &e.name == name
                })
        })
        .ok_or_else(|| format!("{} has no such example", mapping.file))?;
    let body = match (&sample.payload, &sample.payload_file) {
        (Some(payload), _) => serde_json::to_vec(payload)?,
        (None, Some(file)) => std::fs::read(mapping.dir.join(file)).map_err(file_error(file))?,
        (None, None) => return Err(format!("example `{}` has no payload", sample.name).into()),
    };
    let base = url
        .unwrap_or_else(|| format!("http://{}", config.listen))
        .trim_end_matches('/')
        .to_string();
    let target = format!("{base}/hooks/{source}");
    let mut headers: Headers = sample
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if headers.get("content-type").is_none() {
        headers.insert("content-type", "application/json");
    }
    if let Some(crate::mapping::FieldGetter::Header(name)) = &mapping.delivery_id {
        // A fresh delivery id, so a second run is not answered as a duplicate.
        headers = headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .collect();
        headers.insert(name, format!("sample-{:016x}", rand::random::<u64>()));
    }
    let mut request = InboundRequest {
        method: "POST".into(),
        url: config
            .public_url
            .as_ref()
            .map_or(target.clone(), |public| format!("{public}/hooks/{source}")),
        headers,
        body: body.into(),
    };
    mapping
        .verifier
        .sign(&mut request, std::time::SystemTime::now());
    let client = http_client(Duration::from_secs(30))?;
    let mut outgoing = client.post(&target).body(request.body.clone());
    for (name, value) in request.headers.iter() {
        outgoing = outgoing.header(name, value);
    }
    let response = outgoing
        .send()
        .await
        .map_err(|e| format!("cannot reach {target}: {e}"))?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    out!(
        "POST {target} ({} example `{}`)\n{status}\n{answer}",
        mapping.file,
        sample.name
    );
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the gateway answered {status}").into())
    }
}
