//! The reference for the ingest figures in `scripts/bench`: the least an actix-web server can do
//! with a webhook (read the whole body, answer 202 with a small JSON body), with nothing of
//! casegate in between. Whatever casegate reaches is read as a share of this, measured in the
//! same run, on the same machine, with the same payload and load.
//!
//! Not a timing loop: it serves until killed.
//!
//! `cargo bench --bench bare -- 127.0.0.1:9000 [WORKERS]`, or the built binary
//! `target/release/deps/bare-<hash> ADDR [WORKERS]` (what `scripts/bench` runs). The address may
//! also come from `BARE_LISTEN`, the worker count from `BARE_WORKERS`; the default worker count is
//! one per CPU core, like casegate's `ingress.workers = 0`.

use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;

/// Reads the whole body (actix buffers it into `Bytes`, up to the limit set below) and answers
/// 202, so the reference pays for receiving a 7 KB request just as casegate does.
async fn receive(body: Bytes) -> HttpResponse {
    std::hint::black_box(&body);
    HttpResponse::Accepted()
        .content_type("application/json")
        .body(r#"{"accepted":1}"#)
}

fn main() -> std::io::Result<()> {
    // `cargo bench` passes `--bench` to every bench target; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let listen = args
        .first()
        .cloned()
        .or_else(|| std::env::var("BARE_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let workers = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("BARE_WORKERS").ok())
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|&w| w > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    actix_web::rt::System::new().block_on(async move {
        eprintln!("bare: listening on {listen} with {workers} workers");
        HttpServer::new(|| {
            App::new()
                .app_data(web::PayloadConfig::new(5 * 1024 * 1024))
                .route("/hooks/{source}", web::post().to(receive))
        })
        .workers(workers)
        .bind(&listen)?
        .run()
        .await
    })
}
