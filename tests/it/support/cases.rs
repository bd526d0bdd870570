//! Case records written straight into a buffer, as a backlog: `Event <i>` for the test queue.

use casegate::buffer::{Buffer, Enqueue};
use casegate::case::{CaseMeta, CaseRecord};

use super::gateway::QUEUE;

/// Case `i` of the test queue, titled `Event <i>`, as mapping `src.yaml`'s rule `all` makes it.
pub fn case(i: usize) -> CaseRecord {
    case_in(QUEUE, i)
}

/// Case `i` of `queue`.
pub fn case_in(queue: &str, i: usize) -> CaseRecord {
    CaseRecord {
        queue: queue.into(),
        api_key_name: None,
        title: format!("Event {i}"),
        data: format!(r#"{{"id":{i}}}"#),
        labels: vec![],
        meta: CaseMeta {
            source: "src".into(),
            mapping_file: "src.yaml".into(),
            mapping_version: "test".into(),
            rule: "all".into(),
            request_id: format!("r{i}"),
            delivery_id: None,
            event_type: None,
            received_at_ms: 0,
        },
    }
}

/// Writes `cases` straight into `buffer` (500 per write), as a backlog a gateway starts on.
pub async fn backlog(buffer: &Buffer, cases: impl IntoIterator<Item = CaseRecord>) {
    let cases: Vec<CaseRecord> = cases.into_iter().collect();
    for chunk in cases.chunks(500) {
        buffer
            .enqueue(Enqueue {
                dedupe: None,
                cases: chunk.to_vec(),
                dead_letters: vec![],
            })
            .await
            .unwrap();
    }
}
