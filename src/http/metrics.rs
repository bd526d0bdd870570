//! `GET /metrics`: Prometheus text format. Buffer gauges are read at scrape time, so they are as
//! fresh as the scrape.

use actix_web::{HttpResponse, web};

use super::AppState;
use crate::clock::now_ms;
use crate::prometheus;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let buffer = state.ingestor.buffer();
    if let Ok(queues) = buffer.queues().await {
        for queue in queues {
            if let Ok(stats) = buffer.stats(&queue).await {
                metrics::gauge!(prometheus::BUFFER_DEPTH, "queue" => queue.clone())
                    .set(stats.depth as f64);
                let age = stats
                    .oldest_received_at_ms
                    .map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
                metrics::gauge!(prometheus::BUFFER_OLDEST_AGE, "queue" => queue).set(age);
            }
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(prometheus::handle().render())
}
