//! The sandbox through HTTP, with `actix_web::test::init_service` (no socket) and a manual clock,
//! plus `serve_until` on a real port. One file per subject: creating and listing cases
//! (`cases`), authentication and the rate limit (`access`), injected faults (`faults`), and the
//! control routes and serving (`serving`).

mod access;
mod cases;
mod faults;
mod serving;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::test;
use serde_json::Value;

use crate::{ManualClock, Sandbox, SandboxConfig};

const Q: &str = "3c90c3cc-0d44-4b50-8888-8dd25736052a";
const KEY: &str = "dv_test";

fn sandbox_with(config: SandboxConfig) -> (ManualClock, Sandbox) {
    let clock = ManualClock::new(1_705_312_800_000);
    let sandbox = Sandbox::with_clock(
        SandboxConfig {
            api_key: KEY.to_owned(),
            ..config
        },
        Arc::new(clock.clone()),
    )
    .unwrap();
    (clock, sandbox)
}

fn sandbox() -> (ManualClock, Sandbox) {
    sandbox_with(SandboxConfig::default())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

/// The sandbox's routes as a service without a socket (a macro because the service type is not
/// nameable without depending on actix-http).
macro_rules! app {
    ($sandbox:expr) => {
        actix_web::test::init_service(
            actix_web::App::new().configure(crate::configure($sandbox.clone())),
        )
        .await
    };
}

/// Calls the service and reads the reply (a macro for the same reason as `app!`).
macro_rules! call {
    ($app:expr, $req:expr) => {
        crate::tests::reply(actix_web::test::call_service($app, $req.to_request()).await).await
    };
}

use {app, call};

async fn reply<B: MessageBody>(resp: ServiceResponse<B>) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = test::read_body(resp).await;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "non-JSON answer {status}: {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn post(path: &str, body: &Value) -> test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {KEY}")))
        .insert_header(("content-type", "application/json"))
        .set_payload(serde_json::to_vec(body).unwrap())
}

fn get(path: &str) -> test::TestRequest {
    test::TestRequest::get()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {KEY}")))
}

fn cases_path(version: &str, queue: &str) -> String {
    format!("/{version}/queues/{queue}/cases")
}

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_eq!(reply.body["error"], code, "{}", reply.body);
    assert!(reply.body["message"].is_string(), "{}", reply.body);
    assert_eq!(reply.body.as_object().unwrap().len(), 2, "{}", reply.body);
}
