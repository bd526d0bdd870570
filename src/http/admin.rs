//! `/admin/*`: status, dead letters and reloads for operators. Registered only when an admin
//! token is configured; every request must carry it as a bearer token (compared in constant
//! time). Answers are the same JSON the CLI prints.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::dlq::{self, DeadLetterView, DlqError};
use crate::error::{ApiError, Problem};

/// Proof that the request carried the admin token.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Admin, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let unauthorized = |message: &str| ApiError::new(Problem::Unauthorized, message);
        let Some(state) = request.app_data::<web::Data<AppState>>() else {
            return ready(Err(unauthorized("admin API is off")));
        };
        let Some(token) = &state.admin_token else {
            return ready(Err(unauthorized("admin API is off")));
        };
        let presented = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        ready(match presented {
            None => Err(unauthorized("missing bearer token")),
            Some(given) if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) => {
                Ok(Admin)
            }
            Some(_) => Err(unauthorized("wrong bearer token")),
        })
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .route("/status", web::get().to(status))
            .route("/dlq", web::get().to(list))
            .route("/dlq", web::delete().to(purge_all))
            .route("/dlq/replay", web::post().to(replay_all))
            .route("/dlq/{id}", web::get().to(show))
            .route("/dlq/{id}", web::delete().to(purge_one))
            .route("/dlq/{id}/replay", web::post().to(replay_one))
            .route("/reload", web::post().to(reload)),
    );
}

fn dlq_error(error: DlqError, state: &AppState) -> ApiError {
    match error {
        DlqError::NotFound(id) => {
            ApiError::new(Problem::NoSuchDeadLetter, format!("no dead letter {id}"))
        }
        DlqError::Buffer(e) => ApiError::from_buffer(e, state.retry_after),
    }
}

#[derive(Deserialize)]
pub struct Filter {
    source: Option<String>,
    limit: Option<usize>,
    /// Where a paged dry run continues (the previous page's `next`).
    after: Option<String>,
    /// `?dry_run=true` on a replay: say what it would do, write nothing.
    #[serde(default)]
    dry_run: bool,
}

async fn status(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mappings = state.ingestor.mappings();
    let mut report = crate::status::report(
        state.ingestor.buffer(),
        &mappings,
        state.delivery.as_ref(),
        state.ingestor.default_secrets_allowed(),
    )
    .await
    .map_err(|e| ApiError::from_buffer(e, state.retry_after))?;
    report.mappings = state.mapping_reloader.as_ref().map(|r| r.status());
    Ok(HttpResponse::Ok().json(report))
}

async fn list(
    _: Admin,
    state: web::Data<AppState>,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, ApiError> {
    let letters = dlq::list(
        state.ingestor.buffer(),
        filter.source.as_deref(),
        filter.limit.unwrap_or(dlq::PAGE).min(dlq::MAX_PREVIEW_PAGE),
    )
    .await
    .map_err(|e| dlq_error(e, &state))?;
    let views: Vec<_> = letters.iter().map(DeadLetterView::summary).collect();
    Ok(HttpResponse::Ok().json(json!({"dead_letters": views})))
}

async fn show(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let letter = dlq::show(state.ingestor.buffer(), &id)
        .await
        .map_err(|e| dlq_error(e, &state))?;
    Ok(HttpResponse::Ok().json(DeadLetterView::full(&letter)))
}

async fn replay_one(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, ApiError> {
    let mappings = state.ingestor.mappings();
    if filter.dry_run {
        let letter = dlq::show(state.ingestor.buffer(), &id)
            .await
            .map_err(|e| dlq_error(e, &state))?;
        let mapping = mappings.get(&letter.record.source);
        let preview = dlq::preview(
            &letter,
            mapping.map(|m| m.as_ref()),
            &state.ingestor.remap(),
        );
        return Ok(HttpResponse::Ok().json(preview));
    }
    let outcome = dlq::replay(
        state.ingestor.buffer(),
        &mappings,
        &state.ingestor.remap(),
        &id,
    )
    .await
    .map_err(|e| dlq_error(e, &state))?;
    state.ingestor.wake_delivery();
    Ok(HttpResponse::Ok().json(outcome))
}

async fn replay_all(
    _: Admin,
    state: web::Data<AppState>,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, ApiError> {
    let mappings = state.ingestor.mappings();
    if filter.dry_run {
        let page = dlq::preview_page(
            state.ingestor.buffer(),
            &mappings,
            &state.ingestor.remap(),
            filter.source.as_deref(),
            filter.after.as_deref(),
            filter.limit.unwrap_or(dlq::PAGE),
        )
        .await
        .map_err(|e| dlq_error(e, &state))?;
        return Ok(HttpResponse::Ok().json(page));
    }
    let outcomes = dlq::replay_all(
        state.ingestor.buffer(),
        &mappings,
        &state.ingestor.remap(),
        filter.source.as_deref(),
        |_, _, _| {},
    )
    .await
    .map_err(|e| dlq_error(e, &state))?;
    state.ingestor.wake_delivery();
    Ok(HttpResponse::Ok().json(json!({"replayed": outcomes})))
}

async fn purge_one(
    _: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let removed = dlq::purge(state.ingestor.buffer(), &[id.into_inner()], None)
        .await
        .map_err(|e| dlq_error(e, &state))?;
    Ok(HttpResponse::Ok().json(json!({"purged": removed})))
}

async fn purge_all(
    _: Admin,
    state: web::Data<AppState>,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, ApiError> {
    let removed = dlq::purge(state.ingestor.buffer(), &[], filter.source.as_deref())
        .await
        .map_err(|e| dlq_error(e, &state))?;
    Ok(HttpResponse::Ok().json(json!({"purged": removed})))
}

async fn reload(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.mapping_reloader.as_ref() {
        None => Err(ApiError::new(
            Problem::ReloadUnavailable,
            "mapping reload is not configured",
        )),
        Some(reloader) => match reloader.reload_now() {
            Ok(sources) => {
                Ok(HttpResponse::Ok().json(json!({"reloaded": true, "sources": sources})))
            }
            Err(errors) => Err(ApiError::new(
                Problem::MappingErrors,
                format!(
                    "the previous mappings stay in service: {}",
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )),
        },
    }
}
