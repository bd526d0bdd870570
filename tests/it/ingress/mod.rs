//! `POST /hooks/{source}` end to end: real server, real signatures, real buffers.

use casegate::inbound::Headers;

use crate::support::gateway::QUEUE;

mod durability;
mod requests;
mod signatures;

pub(super) fn mapping_with(verify: &str, extra: &str) -> String {
    format!(
        "verify: {verify}\n{extra}rules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Event {{{{ $.id ?? \"none\" }}}}'\n"
    )
}

pub(super) fn json_with(pairs: &[(&str, &str)]) -> Headers {
    std::iter::once(("content-type", "application/json"))
        .chain(pairs.iter().copied())
        .collect()
}
