//! The request contract of `POST /queues/{queue_id}/cases` and `GET /queues/{queue_id}/cases`,
//! as pure functions over bytes and query pairs. Nothing here knows about HTTP.
//!
//! The path's queue id and the `Content-Type` are checked here; the body of a create request in
//! [`create`] and the list endpoint's query in [`list`]. Rules come from cases-reference.txt and
//! public-api-guide.txt, each table-tested next to its code.

mod create;
mod list;

pub use create::{
    BodyForm, CreateRequest, MAX_CASE_TITLE_CHARS, MAX_CASES_PER_REQUEST, MAX_COLOR_HUE, NewCase,
    NewLabel, validate_create,
};
pub use list::{
    CASE_STATUSES, DEFAULT_LIST_LIMIT, ListQuery, MAX_LIST_LIMIT, MAX_LIST_OFFSET, SortOrder,
    parse_list_query,
};

/// A request broke the contract. Every variant is a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("queue_id must be a UUID (8-4-4-4-12 hexadecimal digits)")]
    QueueId,
    #[error("{0}")]
    Body(String),
    /// One case is invalid; `path` starts with `cases[index]` or `case`.
    #[error("{path} {reason}")]
    Case {
        index: usize,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Query(String),
}

/// Whether `s` matches the documented queue id pattern
/// `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`.
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Checks the queue id path parameter.
pub fn check_queue_id(s: &str) -> Result<(), ContractError> {
    if is_queue_id(s) {
        Ok(())
    } else {
        Err(ContractError::QueueId)
    }
}

/// Whether a `Content-Type` header value names JSON (`application/json`, any parameters).
pub fn is_json_content_type(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_must_match_the_documented_uuid_pattern() {
        let table = [
            ("3c90c3cc-0d44-4b50-8888-8dd25736052a", true),
            ("3C90C3CC-0D44-4B50-8888-8DD25736052A", true),
            ("00000000-0000-0000-0000-000000000000", true),
            ("3c90c3cc0d444b5088888dd25736052a", false),
            ("3c90c3cc-0d44-4b50-8888-8dd25736052", false),
            ("3c90c3cc-0d44-4b50-8888-8dd25736052aa", false),
            ("3c90c3cc-0d44-4b50-8888_8dd25736052a", false),
            ("gc90c3cc-0d44-4b50-8888-8dd25736052a", false),
            ("orders", false),
            ("", false),
        ];
        for (id, ok) in table {
            assert_eq!(is_queue_id(id), ok, "{id}");
        }
        assert_eq!(check_queue_id("x"), Err(ContractError::QueueId));
    }

    #[test]
    fn only_json_content_types_are_accepted() {
        let table = [
            (Some("application/json"), true),
            (Some("application/json; charset=utf-8"), true),
            (Some("Application/JSON"), true),
            (Some("text/plain"), false),
            (Some("application/jsonx"), false),
            (None, false),
        ];
        for (value, ok) in table {
            assert_eq!(is_json_content_type(value), ok, "{value:?}");
        }
    }
}
