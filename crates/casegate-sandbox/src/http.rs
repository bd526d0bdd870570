//! The sandbox's actix handlers. They only adapt: extract, call the [`Sandbox`] step by step (the
//! order is documented in the crate root), and render the result with the rate-limit headers.

use std::future::Future;
use std::net::TcpListener;

use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use serde::Serialize;

use crate::contract::{self, ContractError};
use crate::{Faults, RateDecision, Sandbox, SandboxCase, SandboxError};

/// Most bytes read and thrown away from a refused request's body, so the client gets to read the
/// answer instead of a reset connection.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Registers the sandbox routes (API routes under `/v1` and `/v2`, control routes under
/// `/_sandbox`) on an actix `ServiceConfig`, as scopes carrying their own `web::Data<Sandbox>`,
/// so it can be served alone (`App::new().configure(configure(sandbox))`) or mounted into another
/// app that has no `/v1`, `/v2` or `/_sandbox` scope of its own. Unknown paths inside those scopes
/// answer a JSON 404; the host app's default service is left alone.
pub fn configure(sandbox: Sandbox) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let data = web::Data::new(sandbox);
        for version in ["/v1", "/v2"] {
            cfg.service(
                web::scope(version)
                    .app_data(data.clone())
                    .service(
                        web::resource("/queues/{queue_id}/cases")
                            .route(web::post().to(create_cases))
                            .route(web::get().to(list_cases))
                            .default_service(web::to(method_not_allowed)),
                    )
                    .default_service(web::to(no_route)),
            );
        }
        cfg.service(
            web::scope("/_sandbox")
                .app_data(data)
                .route("/stats", web::get().to(stats))
                .route("/faults", web::get().to(get_faults))
                .route("/faults", web::put().to(put_faults))
                .route("/reset", web::post().to(reset))
                .default_service(web::to(no_route)),
        );
    }
}

/// Serves the sandbox alone on an already-bound listener until `shutdown` resolves, then stops
/// gracefully (in-flight requests get up to 1 s). Tests bind port 0.
pub async fn serve_until(
    sandbox: Sandbox,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let config = sandbox.config();
    tracing::warn!(
        %addr,
        rate = config.rate,
        window_secs = config.window.as_secs_f64(),
        "duvo api sandbox listening: a local stand-in for development and tests, not the real duvo api; do not expose it"
    );
    let mut server = HttpServer::new(move || {
        App::new()
            .configure(configure(sandbox.clone()))
            .default_service(web::to(no_route))
    })
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(1)
    .run();
    let handle = server.handle();
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {}
    }
    // The server future carries out the stop command, so it must be polled alongside it.
    let ((), result) = tokio::join!(handle.stop(true), server);
    result?;
    tracing::info!(%addr, "duvo api sandbox stopped");
    Ok(())
}

/// `POST /{v}/queues/{queue_id}/cases`
async fn create_cases(
    sandbox: web::Data<Sandbox>,
    req: HttpRequest,
    queue_id: web::Path<String>,
    mut payload: web::Payload,
) -> HttpResponse {
    let (outcome, rate) = match check_access(&sandbox, &req).await {
        Err((e, rate)) => (Err(e), rate),
        Ok(rate) => (
            create_after_gate(&sandbox, &req, &queue_id, &mut payload).await,
            rate,
        ),
    };
    if outcome.is_err() {
        drain(&mut payload).await;
    }
    let outcome = outcome.map(|added| {
        let body = serde_json::json!({ "added_cases": added });
        (StatusCode::CREATED, body)
    });
    api_answer(&sandbox, outcome, rate)
}

async fn create_after_gate(
    sandbox: &Sandbox,
    req: &HttpRequest,
    queue_id: &str,
    payload: &mut web::Payload,
) -> Result<Vec<SandboxCase>, SandboxError> {
    contract::check_queue_id(queue_id)?;
    let body = read_case_body(req, payload, sandbox.config().max_body_bytes).await?;
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !contract::is_json_content_type(content_type) {
        return Err(SandboxError::Invalid(
            "Content-Type must be application/json".to_owned(),
        ));
    }
    sandbox.create(queue_id, &body)
}

/// `GET /{v}/queues/{queue_id}/cases`
async fn list_cases(
    sandbox: web::Data<Sandbox>,
    req: HttpRequest,
    queue_id: web::Path<String>,
) -> HttpResponse {
    let (outcome, rate) = match check_access(&sandbox, &req).await {
        Err((e, rate)) => (Err(e), rate),
        Ok(rate) => {
            let outcome = contract::check_queue_id(&queue_id)
                .and_then(|()| {
                    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
                        .map_err(|e| ContractError::Query(format!("bad query string: {e}")))?;
                    contract::parse_list_query(&pairs)
                })
                .map_err(SandboxError::from)
                .map(|query| {
                    let list = sandbox.list(&queue_id, &query);
                    (StatusCode::OK, serde_json::json!(list))
                });
            (outcome, rate)
        }
    };
    api_answer(&sandbox, outcome, rate)
}

/// Steps 1-4 of every API request: latency, outage, auth, rate limit. Returns the rate-limit
/// state to report, with the error when the request stops here.
async fn check_access(
    sandbox: &Sandbox,
    req: &HttpRequest,
) -> Result<RateDecision, (SandboxError, RateDecision)> {
    let latency = sandbox.begin();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Err(e) = sandbox.check_outage() {
        return Err((e, sandbox.rate_state()));
    }
    let auth = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let key = match sandbox.authorize(auth) {
        Ok(key) => key,
        Err(e) => return Err((e, sandbox.rate_state())),
    };
    let rate = sandbox.admit(&key);
    if !rate.allowed {
        let e = SandboxError::RateLimited {
            retry_after_secs: rate.retry_after_secs(),
        };
        return Err((e, rate));
    }
    Ok(rate)
}

/// Reads the whole body, refusing it with 413 as soon as it is known to exceed `limit`.
async fn read_case_body(
    req: &HttpRequest,
    payload: &mut web::Payload,
    limit: usize,
) -> Result<Vec<u8>, SandboxError> {
    let too_large = SandboxError::PayloadTooLarge { limit };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| SandboxError::Invalid(format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads and discards what is left of a refused request's body (up to [`DRAIN_LIMIT`]).
async fn drain(payload: &mut web::Payload) {
    let mut seen = 0;
    while seen < DRAIN_LIMIT {
        match payload.next().await {
            Some(Ok(chunk)) => seen += chunk.len(),
            _ => break,
        }
    }
}

/// Renders an API answer with the rate-limit headers, and counts it.
fn api_answer(
    sandbox: &Sandbox,
    outcome: Result<(StatusCode, serde_json::Value), SandboxError>,
    rate: RateDecision,
) -> HttpResponse {
    let mut response = match outcome {
        Ok((status, body)) => HttpResponse::build(status).json(body),
        Err(e) => error_answer(&e),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", u64::from(rate.limit)),
        ("x-ratelimit-remaining", u64::from(rate.remaining)),
        ("x-ratelimit-reset", rate.reset_secs),
    ] {
        headers.insert(
            actix_web::http::header::HeaderName::from_static(name),
            value.into(),
        );
    }
    sandbox.record_status(response.status().as_u16());
    response
}

/// `{"error": "<code>", "message": "<text>"}` with the error's status and `retry-after`.
fn error_answer(e: &SandboxError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    if let Some(secs) = e.retry_after_secs() {
        builder.insert_header((RETRY_AFTER, secs));
    }
    builder.json(ErrorJson {
        error: e.code(),
        message: e.to_string(),
    })
}

#[derive(Serialize)]
struct ErrorJson {
    error: &'static str,
    message: String,
}

async fn no_route(req: HttpRequest) -> HttpResponse {
    error_answer(&SandboxError::NotFound(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed() -> HttpResponse {
    error_answer(&SandboxError::MethodNotAllowed)
}

/// `GET /_sandbox/stats`
async fn stats(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.stats())
}

/// `GET /_sandbox/faults`
async fn get_faults(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.faults())
}

/// `PUT /_sandbox/faults`: the body replaces the faults; answers the faults now in force.
async fn put_faults(sandbox: web::Data<Sandbox>, body: web::Bytes) -> HttpResponse {
    let result = serde_json::from_slice::<Faults>(&body)
        .map_err(|e| SandboxError::Invalid(format!("body is not a valid Faults object: {e}")))
        .and_then(|faults| sandbox.try_set_faults(faults).map_err(SandboxError::from));
    match result {
        Ok(()) => HttpResponse::Ok().json(sandbox.faults()),
        Err(e) => error_answer(&e),
    }
}

/// `POST /_sandbox/reset`
async fn reset(sandbox: web::Data<Sandbox>) -> HttpResponse {
    sandbox.reset();
    HttpResponse::NoContent().finish()
}
