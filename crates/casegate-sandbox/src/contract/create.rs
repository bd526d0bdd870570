//! The body of a create request (cases-reference.txt, public-api-guide.txt):
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

use super::ContractError;

/// Most cases in one request.
pub const MAX_CASES_PER_REQUEST: usize = 100;
/// Most characters in a title.
pub const MAX_CASE_TITLE_CHARS: usize = 500;
/// Largest label hue.
pub const MAX_COLOR_HUE: u16 = 360;

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
    case_fields(value).map_err(|(field, reason)| ContractError::Case {
        index,
        path: format!("{}{field}", form.case_path(index)),
        reason,
    })
}

/// Why a case is invalid: the path of the offending field below the case (`.title`,
/// `.labels[2].value`, or "" for the case itself) and the reason.
type FieldError = (String, String);

fn case_fields(value: Value) -> Result<NewCase, FieldError> {
    let mut fields = object(value, &["title", "data", "labels"])?;
    let title = required_string(&mut fields, "title")?;
    let chars = title.chars().count();
    if chars > MAX_CASE_TITLE_CHARS {
        return Err((
            ".title".to_owned(),
            format!("must be at most {MAX_CASE_TITLE_CHARS} characters (got {chars})"),
        ));
    }
    let data = take_string(&mut fields, "data").map_err(|(field, reason)| {
        let hint = "send structured data as an encoded JSON string";
        (field, format!("{reason}; {hint}"))
    })?;
    let labels = match fields.remove("labels") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(j, item)| {
                label_fields(item)
                    .map_err(|(field, reason)| (format!(".labels[{j}]{field}"), reason))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err((
                ".labels".to_owned(),
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

fn label_fields(value: Value) -> Result<NewLabel, FieldError> {
    let mut fields = object(value, &["key", "value", "color_hue"])?;
    let key = take_string(&mut fields, "key")?.unwrap_or_default();
    let value = required_string(&mut fields, "value")?;
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

/// The fields of `value`, if it is an object with no field outside `allowed`.
fn object(value: Value, allowed: &[&str]) -> Result<Map<String, Value>, FieldError> {
    let Value::Object(fields) = value else {
        return Err((
            String::new(),
            format!("must be an object, got {}", kind(&value)),
        ));
    };
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err((String::new(), format!("has unknown field `{unknown}`"))),
        None => Ok(fields),
    }
}

/// Removes the field `name`: `None` when absent, its text when it is a string.
fn take_string(fields: &mut Map<String, Value>, name: &str) -> Result<Option<String>, FieldError> {
    match fields.remove(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err((
            format!(".{name}"),
            format!("must be a string, got {}", kind(&other)),
        )),
    }
}

/// Removes the field `name`, which must be a non-empty string.
fn required_string(fields: &mut Map<String, Value>, name: &str) -> Result<String, FieldError> {
    match take_string(fields, name)? {
        None => Err((format!(".{name}"), "is required".to_owned())),
        Some(text) if text.is_empty() => Err((format!(".{name}"), "must not be empty".to_owned())),
        Some(text) => Ok(text),
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
}
