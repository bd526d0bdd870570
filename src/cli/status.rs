//! `casegate status` and `casegate healthcheck`.

use super::*;

pub(super) async fn status(
    config_file: Option<PathBuf>,
    url: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let config = load_config(config_file.as_deref(), &Overrides::default())?;
    let admin = AdminApi::from_config(&config, url)?;
    let report: crate::status::StatusReport =
        serde_json::from_value(admin.call("GET", "/admin/status").await?)?;
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        write_stdout(format_args!("{}", crate::status::render(&report)));
    }
    Ok(())
}

pub(super) async fn healthcheck(url: Option<String>) -> Result<(), CliError> {
    let base = match url {
        Some(url) => url,
        None => local_url(load_config(None, &Overrides::default())?.listen),
    };
    let response = http_client(client::CALL_TIMEOUT)?
        .get(format!("{}/healthz", base.trim_end_matches('/')))
        .send()
        .await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("unhealthy: {}", response.status()).into())
    }
}
