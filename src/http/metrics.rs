//! `GET /metrics`: Prometheus text format. Buffer gauges are read at scrape time, so they are as
//! fresh as the scrape.

use actix_web::{HttpResponse, web};

use super::AppState;
use crate::clock::now_ms;
use crate::prometheus;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let buffer = state.ingestor.buffer();
    let mut stats = Vec::new();
    let mut queues = buffer.queues().await.unwrap_or_default();
    queues.extend(
        state
            .ingestor
            .mappings()
            .iter()
            .flat_map(|m| m.queues().map(str::to_string).collect::<Vec<_>>()),
    );
    queues.sort();
    queues.dedup();
    for queue in queues {
        // A queue the backend cannot answer for keeps its last figures rather than a false zero.
        let figures = buffer.stats(&queue).await.ok().map(|s| {
            let age = match (s.depth, s.oldest_received_at_ms) {
                (0, _) | (_, None) => 0.0,
                (_, Some(at)) => now_ms().saturating_sub(at) as f64 / 1000.0,
            };
            (s.depth, age)
        });
        stats.push((queue, figures));
    }
    prometheus::set_buffer_gauges(&stats);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(prometheus::handle().render())
}
