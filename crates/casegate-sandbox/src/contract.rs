//! The request contract of `POST /queues/{queue_id}/cases` and `GET /queues/{queue_id}/cases`,
//! as pure functions over bytes and query pairs. Nothing here knows about HTTP.
//!
//! Rules (cases-reference.txt, public-api-guide.txt), each table-tested below:
//! - the body is a JSON object with exactly one of `case` (an object) or `cases` (an array of
//!   1-100 objects); any other top-level field is refused;
//! - a case has `title` (a string of 1-500 characters, counted as Unicode scalar values, not
//!   bytes), optional `data` (a string: JSON payloads go in as an encoded string, and `null` is
//!   refused like any other non-string) and optional `labels`;
//! - a label has optional `key` (string, default ""), `value` (string of at least 1 character)
//!   and optional `color_hue` (integer 0-360); any other field is refused.
//!
//! The first broken rule, in document order, is reported. Errors about one case start with its
//! path, `cases[<index>]` (or `case` for the single form), so a client can find the offending
//! case in the message: `cases[3].title must be at most 500 characters (got 501)`.

use serde_json::{Map, Value};

/// Most cases in one request.
pub const MAX_CASES_PER_REQUEST: usize = 100;
/// Most characters in a title.
pub const MAX_CASE_TITLE_CHARS: usize = 500;
/// Largest label hue.
pub const MAX_COLOR_HUE: u16 = 360;
/// Default and bounds of the list `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 20;
pub const MAX_LIST_LIMIT: usize = 100;
/// Largest list `offset` the API accepts (2^53 - 1).
pub const MAX_LIST_OFFSET: u64 = 9_007_199_254_740_991;
/// Case statuses the list `status` filter accepts.
pub const CASE_STATUSES: [&str; 6] = [
    "pending",
    "claimed",
    "completed",
    "failed",
    "needs_input",
    "postponed",
];

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

/// Which form the body used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// `{"case": {...}}`
    One,
    /// `{"cases": [...]}`
    Many,
}

impl BodyForm {
    /// How errors name the case at `index`: `case` or `cases[index]`.
    pub fn case_path(self, index: usize) -> String {
        match self {
            BodyForm::One => "case".to_owned(),
            BodyForm::Many => format!("cases[{index}]"),
        }
    }
}

/// A valid create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub form: BodyForm,
    /// 1 to 100 cases, in request order.
    pub cases: Vec<NewCase>,
}

/// One valid case from a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCase {
    pub title: String,
    pub data: Option<String>,
    pub labels: Vec<NewLabel>,
}

/// One valid label from a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLabel {
    pub key: String,
    pub value: String,
    pub color_hue: Option<u16>,
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

/// Parses and validates a create-cases body.
pub fn validate_create(body: &[u8]) -> Result<CreateRequest, ContractError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ContractError::Body(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(ContractError::Body(format!(
            "body must be a JSON object with `case` or `cases`, got {}",
            kind(&value)
        )));
    };
    if let Some(unknown) = top.keys().find(|k| *k != "case" && *k != "cases") {
        return Err(ContractError::Body(format!(
            "unknown field `{unknown}` in body; expected `case` or `cases`"
        )));
    }
    match (top.remove("case"), top.remove("cases")) {
        (Some(_), Some(_)) => Err(ContractError::Body(
            "provide either `case` or `cases`, not both".to_owned(),
        )),
        (None, None) => Err(ContractError::Body(
            "provide `case` (one object) or `cases` (an array of 1-100 objects)".to_owned(),
        )),
        (Some(one), None) => Ok(CreateRequest {
            form: BodyForm::One,
            cases: vec![validate_case(one, BodyForm::One, 0)?],
        }),
        (None, Some(Value::Array(items))) => {
            if items.is_empty() || items.len() > MAX_CASES_PER_REQUEST {
                return Err(ContractError::Body(format!(
                    "`cases` must hold 1-{MAX_CASES_PER_REQUEST} cases, got {}",
                    items.len()
                )));
            }
            let cases = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| validate_case(item, BodyForm::Many, i))
                .collect::<Result<_, _>>()?;
            Ok(CreateRequest {
                form: BodyForm::Many,
                cases,
            })
        }
        (None, Some(other)) => Err(ContractError::Body(format!(
            "`cases` must be an array, got {}",
            kind(&other)
        ))),
    }
}

fn validate_case(value: Value, form: BodyForm, index: usize) -> Result<NewCase, ContractError> {
    let base = form.case_path(index);
    let fail = |path: String, reason: String| ContractError::Case {
        index,
        path,
        reason,
    };
    let Value::Object(mut fields) = value else {
        return Err(fail(
            base,
            format!("must be an object, got {}", kind(&value)),
        ));
    };
    only_fields(&fields, &["title", "data", "labels"])
        .map_err(|f| fail(base.clone(), format!("has unknown field `{f}`")))?;

    let title = match fields.remove("title") {
        None => return Err(fail(format!("{base}.title"), "is required".to_owned())),
        Some(Value::String(t)) => t,
        Some(other) => {
            return Err(fail(
                format!("{base}.title"),
                format!("must be a string, got {}", kind(&other)),
            ));
        }
    };
    let chars = title.chars().count();
    if chars == 0 {
        return Err(fail(
            format!("{base}.title"),
            "must not be empty".to_owned(),
        ));
    }
    if chars > MAX_CASE_TITLE_CHARS {
        return Err(fail(
            format!("{base}.title"),
            format!("must be at most {MAX_CASE_TITLE_CHARS} characters (got {chars})"),
        ));
    }

    let data = match fields.remove("data") {
        None => None,
        Some(Value::String(d)) => Some(d),
        Some(other) => {
            return Err(fail(
                format!("{base}.data"),
                format!(
                    "must be a string, got {}; send structured data as an encoded JSON string",
                    kind(&other)
                ),
            ));
        }
    };

    let labels = match fields.remove("labels") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(j, item)| {
                validate_label(item)
                    .map_err(|(field, reason)| fail(format!("{base}.labels[{j}]{field}"), reason))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(fail(
                format!("{base}.labels"),
                format!("must be an array, got {}", kind(&other)),
            ));
        }
    };

    Ok(NewCase {
        title,
        data,
        labels,
    })
}

/// Validates one label; on failure returns the field suffix (`.value`, or "" for the label
/// itself) and the reason.
fn validate_label(value: Value) -> Result<NewLabel, (String, String)> {
    let Value::Object(mut fields) = value else {
        return Err((
            String::new(),
            format!("must be an object, got {}", kind(&value)),
        ));
    };
    only_fields(&fields, &["key", "value", "color_hue"])
        .map_err(|f| (String::new(), format!("has unknown field `{f}`")))?;
    let key = match fields.remove("key") {
        None => String::new(),
        Some(Value::String(k)) => k,
        Some(other) => {
            return Err((
                ".key".to_owned(),
                format!("must be a string, got {}", kind(&other)),
            ));
        }
    };
    let value = match fields.remove("value") {
        None => return Err((".value".to_owned(), "is required".to_owned())),
        Some(Value::String(v)) if v.is_empty() => {
            return Err((".value".to_owned(), "must not be empty".to_owned()));
        }
        Some(Value::String(v)) => v,
        Some(other) => {
            return Err((
                ".value".to_owned(),
                format!("must be a string, got {}", kind(&other)),
            ));
        }
    };
    let color_hue = match fields.remove("color_hue") {
        None => None,
        Some(hue) => match hue.as_u64().and_then(|h| u16::try_from(h).ok()) {
            Some(h) if h <= MAX_COLOR_HUE => Some(h),
            _ => {
                return Err((
                    ".color_hue".to_owned(),
                    format!("must be an integer from 0 to {MAX_COLOR_HUE}, got {hue}"),
                ));
            }
        },
    };
    Ok(NewLabel {
        key,
        value,
        color_hue,
    })
}

fn only_fields<'a>(fields: &'a Map<String, Value>, allowed: &[&str]) -> Result<(), &'a str> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(unknown),
        None => Ok(()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sort direction of the list endpoint, by creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    Desc,
}

/// A valid list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: usize,
    pub offset: u64,
    pub order: SortOrder,
    /// `None` means every status.
    pub statuses: Option<Vec<String>>,
    /// Case-insensitive substring of the title or data.
    pub search: Option<String>,
}

/// Parses the list endpoint's query pairs. Unknown parameters are ignored, as the API does;
/// `created_at_from` and `updated_at_from` are refused because the sandbox does not filter by
/// date, and silently ignoring a filter would return wrong answers.
pub fn parse_list_query(pairs: &[(String, String)]) -> Result<ListQuery, ContractError> {
    let mut query = ListQuery {
        limit: DEFAULT_LIST_LIMIT,
        offset: 0,
        order: SortOrder::Desc,
        statuses: None,
        search: None,
    };
    let bad = |msg: String| ContractError::Query(msg);
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {value:?}"
                        ))
                    })?;
            }
            "offset" => {
                query.offset = value
                    .parse::<u64>()
                    .ok()
                    .filter(|o| *o <= MAX_LIST_OFFSET)
                    .ok_or_else(|| {
                        bad(format!(
                            "offset must be an integer from 0 to {MAX_LIST_OFFSET}, got {value:?}"
                        ))
                    })?;
            }
            "sort_order" => {
                query.order = match value.as_str() {
                    "asc" => SortOrder::Asc,
                    "desc" => SortOrder::Desc,
                    _ => {
                        return Err(bad(format!(
                            "sort_order must be asc or desc, got {value:?}"
                        )));
                    }
                };
            }
            "sort_by" => match value.as_str() {
                // Sandbox cases never change and are never postponed, so all three orders are
                // creation order.
                "created_at" | "updated_at" | "postponed_to" => {}
                _ => {
                    return Err(bad(format!(
                        "sort_by must be created_at, updated_at or postponed_to, got {value:?}"
                    )));
                }
            },
            "status" => {
                let statuses: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(unknown) = statuses
                    .iter()
                    .find(|s| !CASE_STATUSES.contains(&s.as_str()))
                {
                    return Err(bad(format!(
                        "status must be a comma-separated list of {}, got {unknown:?}",
                        CASE_STATUSES.join(", ")
                    )));
                }
                query.statuses = Some(statuses);
            }
            "search" => query.search = Some(value.clone()).filter(|s| !s.is_empty()),
            "created_at_from" | "updated_at_from" => {
                return Err(bad(format!("{name} is not supported by the sandbox")));
            }
            _ => {}
        }
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn cases(n: usize) -> Value {
        Value::Array((0..n).map(|i| json!({"title": format!("t{i}")})).collect())
    }

    /// (name, body, Ok(number of cases) or Err(substring of the message)).
    fn table() -> Vec<(&'static str, Vec<u8>, Result<usize, &'static str>)> {
        let title = |t: String| body(json!({"case": {"title": t}}));
        vec![
            ("one case", body(json!({"case": {"title": "a"}})), Ok(1)),
            ("cases array", body(json!({"cases": cases(3)})), Ok(3)),
            ("100 cases", body(json!({"cases": cases(100)})), Ok(100)),
            (
                "full case",
                body(json!({"case": {"title": "a", "data": "{\"x\":1}",
                    "labels": [{"key": "k", "value": "v", "color_hue": 360}, {"value": "v2"}]}})),
                Ok(1),
            ),
            (
                "hue 0",
                body(json!({"case": {"title": "a", "labels": [{"value": "v", "color_hue": 0}]}})),
                Ok(1),
            ),
            (
                "empty data string",
                body(json!({"case": {"title": "a", "data": ""}})),
                Ok(1),
            ),
            ("500 ascii chars", title("x".repeat(500)), Ok(1)),
            ("500 multi-byte chars", title("é".repeat(500)), Ok(1)),
            ("500 four-byte chars", title("🦀".repeat(500)), Ok(1)),
            (
                "both",
                body(json!({"case": {"title": "a"}, "cases": cases(1)})),
                Err("not both"),
            ),
            ("neither", body(json!({})), Err("provide `case`")),
            (
                "unknown top-level",
                body(json!({"case": {"title": "a"}, "x": 1})),
                Err("unknown field `x`"),
            ),
            (
                "zero cases",
                body(json!({"cases": []})),
                Err("1-100 cases, got 0"),
            ),
            (
                "101 cases",
                body(json!({"cases": cases(101)})),
                Err("1-100 cases, got 101"),
            ),
            (
                "cases not array",
                body(json!({"cases": {"title": "a"}})),
                Err("must be an array"),
            ),
            (
                "case not object",
                body(json!({"case": "a"})),
                Err("case must be an object"),
            ),
            (
                "case null",
                body(json!({"case": null})),
                Err("case must be an object, got null"),
            ),
            ("not json", b"{\"case\":".to_vec(), Err("not valid JSON")),
            ("empty body", Vec::new(), Err("not valid JSON")),
            ("array body", body(json!([])), Err("must be a JSON object")),
            (
                "title missing",
                body(json!({"case": {"data": "d"}})),
                Err("case.title is required"),
            ),
            (
                "title empty",
                title(String::new()),
                Err("case.title must not be empty"),
            ),
            (
                "title 501",
                title("x".repeat(501)),
                Err("at most 500 characters (got 501)"),
            ),
            (
                "title 501 multi-byte",
                title("é".repeat(501)),
                Err("(got 501)"),
            ),
            (
                "title number",
                body(json!({"case": {"title": 5}})),
                Err("case.title must be a string"),
            ),
            (
                "data object",
                body(json!({"case": {"title": "a", "data": {"x": 1}}})),
                Err("case.data must be a string, got an object"),
            ),
            (
                "data null",
                body(json!({"case": {"title": "a", "data": null}})),
                Err("case.data must be a string, got null"),
            ),
            (
                "unknown case field",
                body(json!({"case": {"title": "a", "status": "x"}})),
                Err("case has unknown field `status`"),
            ),
            (
                "labels not array",
                body(json!({"case": {"title": "a", "labels": {}}})),
                Err("case.labels must be an array"),
            ),
            (
                "label not object",
                body(json!({"case": {"title": "a", "labels": ["v"]}})),
                Err("case.labels[0] must be an object"),
            ),
            (
                "label value missing",
                body(json!({"case": {"title": "a", "labels": [{"key": "k"}]}})),
                Err("case.labels[0].value is required"),
            ),
            (
                "label value empty",
                body(json!({"case": {"title": "a", "labels": [{"value": ""}]}})),
                Err("case.labels[0].value must not be empty"),
            ),
            (
                "label key number",
                body(json!({"case": {"title": "a", "labels": [{"key": 1, "value": "v"}]}})),
                Err("case.labels[0].key must be a string"),
            ),
            (
                "hue 361",
                body(json!({"case": {"title": "a", "labels": [{"value": "v", "color_hue": 361}]}})),
                Err("color_hue must be an integer from 0 to 360, got 361"),
            ),
            (
                "hue negative",
                body(json!({"case": {"title": "a", "labels": [{"value": "v", "color_hue": -1}]}})),
                Err("color_hue must be an integer"),
            ),
            (
                "hue fraction",
                body(json!({"case": {"title": "a", "labels": [{"value": "v", "color_hue": 1.5}]}})),
                Err("color_hue must be an integer"),
            ),
            (
                "hue string",
                body(json!({"case": {"title": "a", "labels": [{"value": "v", "color_hue": "1"}]}})),
                Err("color_hue must be an integer"),
            ),
            (
                "unknown label field",
                body(json!({"case": {"title": "a", "labels": [{"value": "v", "id": "x"}]}})),
                Err("case.labels[0] has unknown field `id`"),
            ),
            (
                "second label bad",
                body(json!({"cases": [{"title": "a", "labels": [{"value": "v"}, {"value": ""}]}]})),
                Err("cases[0].labels[1].value"),
            ),
            (
                "bad case named by index",
                body(json!({"cases": [{"title": "a"}, {"title": "b"}, {"title": ""}]})),
                Err("cases[2].title must not be empty"),
            ),
        ]
    }

    #[test]
    fn create_bodies_are_validated_rule_by_rule() {
        for (name, body, want) in table() {
            match (validate_create(&body), want) {
                (Ok(req), Ok(n)) => assert_eq!(req.cases.len(), n, "{name}"),
                (Err(e), Err(fragment)) => assert!(
                    e.to_string().contains(fragment),
                    "{name}: {e:?} does not contain {fragment:?}"
                ),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_invalid_case_is_reported_with_its_index() {
        let body = body(json!({"cases": [{"title": "a"}, {"title": "b", "data": {"x": 1}}]}));
        let Err(ContractError::Case { index, path, .. }) = validate_create(&body) else {
            panic!("expected a case error");
        };
        assert_eq!((index, path.as_str()), (1, "cases[1].data"));
    }

    #[test]
    fn valid_cases_keep_their_fields_and_label_defaults() {
        let req = validate_create(&body(json!({"case": {"title": "Ünïcode", "data": "d",
            "labels": [{"value": "v"}, {"key": "k", "value": "w", "color_hue": 7}]}})))
        .unwrap();
        assert_eq!(req.form, BodyForm::One);
        assert_eq!(
            req.cases,
            [NewCase {
                title: "Ünïcode".to_owned(),
                data: Some("d".to_owned()),
                labels: vec![
                    NewLabel {
                        key: String::new(),
                        value: "v".to_owned(),
                        color_hue: None
                    },
                    NewLabel {
                        key: "k".to_owned(),
                        value: "w".to_owned(),
                        color_hue: Some(7)
                    },
                ],
            }]
        );
    }

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

    #[test]
    fn list_queries_have_documented_defaults_and_bounds() {
        let q = |pairs: &[(&str, &str)]| {
            let pairs: Vec<_> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            parse_list_query(&pairs)
        };
        let defaults = q(&[]).unwrap();
        assert_eq!(
            (defaults.limit, defaults.offset, defaults.order),
            (20, 0, SortOrder::Desc)
        );
        let set = q(&[
            ("limit", "100"),
            ("offset", "5"),
            ("sort_order", "asc"),
            ("sort_by", "updated_at"),
            ("status", "pending,failed"),
            ("search", "inv"),
            ("unknown", "ignored"),
        ])
        .unwrap();
        assert_eq!((set.limit, set.offset, set.order), (100, 5, SortOrder::Asc));
        assert_eq!(set.statuses.unwrap(), ["pending", "failed"]);
        assert_eq!(set.search.as_deref(), Some("inv"));
        for bad in [
            ("limit", "0"),
            ("limit", "101"),
            ("limit", "x"),
            ("offset", "-1"),
            ("offset", "9007199254740992"),
            ("sort_order", "up"),
            ("sort_by", "title"),
            ("status", "pending,done"),
            ("created_at_from", "2024-01-01T00:00:00Z"),
        ] {
            assert!(
                matches!(q(&[bad]), Err(ContractError::Query(_))),
                "{bad:?} should be refused"
            );
        }
    }
}
