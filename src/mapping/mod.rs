//! Mapping files: how a verified webhook becomes cases, without code.
//!
//! A file is parsed ([`model`]), compiled once at load ([`CompiledMapping::compile`]: every path
//! and template parsed, secrets and queue ids resolved, limits checked), and then applied to each
//! event ([`CompiledMapping::apply`]), which allocates only the cases it returns. A whole
//! directory is compiled into a [`MappingSet`] before it replaces the previous one, so no request
//! ever sees a half-loaded set.

mod compile;
pub mod condition;
pub mod event;
pub mod examples;
pub mod model;
pub mod path;
pub mod prune;
pub mod reload;
pub mod schema;
pub mod set;
pub mod template;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::case::{CaseMeta, CaseRecord, Label};
use crate::env::{Env, interpolate};
use crate::inbound::Headers;
use crate::verify::Verifier;
use condition::Condition;
use model::{ExampleSpec, FieldRef, MappingFile, RuleSpec};
use path::{CompiledPath, Scope};
use template::{Expr, Missing, Template, TemplateError, ValueMaps, truncate_chars};

pub use event::{DeliveryIdFrom, EventInput, MappedEvent, Origin};
pub use reload::{MappingReloader, ReloadStatus};
pub use schema::mapping_schema;
pub use set::{MappingSet, SourceVersion};
pub use watch::ReloadTask;

/// The API's limit on case titles, in characters.
pub const MAX_TITLE_CHARS: usize = 500;

/// Cases one event may produce when its mapping sets no `max_cases`.
pub const DEFAULT_MAX_CASES: usize = 1000;

/// Default of `ingress.max_event_cases_bytes`: the total size of one event's cases.
pub const DEFAULT_MAX_EVENT_CASES_BYTES: usize = 8 * 1024 * 1024;

/// Why a mapping file could not be loaded. Each variant names the file; the message never holds
/// a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingLoadError {
    #[error("{file}: {message}")]
    Io { file: String, message: String },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {}{field}: {message}", rule.as_ref().map(|r| format!("rule `{r}`: ")).unwrap_or_default())]
    Invalid {
        file: String,
        rule: Option<String>,
        field: String,
        message: String,
    },
}

/// Why one event could not be mapped; the event goes to the dead-letter store with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule `{rule}`: {message}")]
pub struct MapFailure {
    pub rule: String,
    pub message: String,
}

/// Reads one value from a request header or the payload.
#[derive(Debug, Clone)]
pub enum FieldGetter {
    Header(String),
    /// `$.a ?? $.b`: the first path that finds a non-null value wins, so a field that a provider
    /// renamed (HubSpot's `eventType`, now `subscriptionType`) is read under either name.
    Path(Vec<CompiledPath>),
}

impl FieldGetter {
    /// Every value found, as text (a path may match several nodes).
    pub fn values(&self, headers: &Headers, scope: Scope<'_>) -> Vec<String> {
        match self {
            FieldGetter::Header(name) => headers
                .get(name)
                .map(|v| vec![v.to_string()])
                .unwrap_or_default(),
            FieldGetter::Path(alternatives) => alternatives
                .iter()
                .map(|path| {
                    path.select(scope)
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::String(s) => Some(s.clone()),
                            Value::Null => None,
                            other => Some(other.to_string()),
                        })
                        .collect::<Vec<_>>()
                })
                .find(|found| !found.is_empty())
                .unwrap_or_default(),
        }
    }

    fn is_element_relative(&self) -> bool {
        matches!(self, FieldGetter::Path(alternatives)
            if alternatives.iter().any(CompiledPath::is_element_relative))
    }
}

/// The case data, compiled.
#[derive(Debug, Clone)]
enum DataTemplate {
    /// A bare path: the selected JSON value (as text when filters are applied).
    Path(Expr),
    /// Text with interpolations.
    Text(Template),
    Object(Vec<(String, DataTemplate)>),
    Array(Vec<DataTemplate>),
    Literal(Value),
}

#[derive(Debug, Clone)]
struct CompiledLabel {
    key: String,
    value: Template,
    color_hue: Option<u16>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    events: Vec<String>,
    filter: Option<Condition>,
    queue: String,
    api_key: Option<String>,
    for_each: Option<CompiledPath>,
    title: Template,
    data: DataTemplate,
    include_headers: Vec<String>,
    include_meta: bool,
    labels: Vec<CompiledLabel>,
}

/// One source's compiled mapping.
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    pub source: String,
    /// File name, for provenance and errors.
    pub file: String,
    /// First 12 hex digits of the file's SHA-256: recorded in every case it makes.
    pub version: String,
    pub verifier: Verifier,
    pub delivery_id: Option<FieldGetter>,
    pub event_type: Option<FieldGetter>,
    pub dedupe_ttl: Option<Duration>,
    /// Most cases one event may produce; checked while expanding, before the next case is built.
    pub max_cases: usize,
    rules: Vec<CompiledRule>,
    pub examples: Vec<ExampleSpec>,
    /// Directory of the mapping file, for examples' `payload_file`.
    pub dir: PathBuf,
    /// The parts of a payload the mapping can read: ingest builds only these.
    pub keep: prune::Keep,
}

impl CompiledMapping {
    /// The delivery id of an event, if the mapping names one and the event carries it.
    pub fn delivery_id_of(&self, payload: &Value, headers: &Headers) -> Option<String> {
        let getter = self.delivery_id.as_ref()?;
        getter
            .values(headers, Scope::of(payload))
            .into_iter()
            .next()
            .filter(|id| !id.is_empty())
    }

    /// The event type(s) at payload level, for logs and metrics.
    pub fn event_types_of(&self, payload: &Value, headers: &Headers) -> Vec<String> {
        self.event_type
            .as_ref()
            .map(|g| g.values(headers, Scope::of(payload)))
            .unwrap_or_default()
    }

    /// Why an event made no case, in one line for people (`casegate try`): when the event type
    /// comes from a header that the request lacks, rules with `when.event` cannot match, and
    /// saying so beats a bare "no rule matched".
    pub fn no_match_reason(&self, headers: &Headers) -> String {
        const FILTERED: &str =
            "the event would be acknowledged and filtered out (200 {\"accepted\": 0})";
        let needs_event = self.rules.iter().any(|r| !r.events.is_empty());
        match &self.event_type {
            Some(FieldGetter::Header(name)) if needs_event && headers.get(name).is_none() => {
                format!(
                    "no rule matched: this mapping reads the event type from the `{name}` header, \
                     which the request lacks, so no rule with `when.event` can match (pass it, \
                     e.g. -H '{name}: ...'); {FILTERED}"
                )
            }
            _ => format!("no rule matched: {FILTERED}"),
        }
    }

    /// The named API keys the rules ask for (`api_key:`), for checking them against the config.
    pub fn api_key_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| r.api_key.as_deref())
    }

    /// The queues the rules deliver to (metrics start them at zero).
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.queue.as_str())
    }

    /// Names of the rules, in file order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Maps one event. An empty list means no rule matched (the event is filtered out). Any
    /// failing rule fails the whole event, so a replay after a fix cannot duplicate cases that
    /// other rules already made.
    pub fn apply(&self, input: &EventInput<'_>) -> Result<Vec<CaseRecord>, MapFailure> {
        self.apply_within(input, DEFAULT_MAX_EVENT_CASES_BYTES)
    }

    /// [`CompiledMapping::apply`] with at most `max_bytes` of cases in all. Both this bound and
    /// `max_cases` are checked while expanding `for_each`, so an event far beyond them stops at
    /// the first case past the bound instead of building everything first.
    pub fn apply_within(
        &self,
        input: &EventInput<'_>,
        max_bytes: usize,
    ) -> Result<Vec<CaseRecord>, MapFailure> {
        let root = input.payload;
        let mut total_bytes = 0usize;
        let event_level_types = match &self.event_type {
            Some(getter) if !getter.is_element_relative() => {
                Some(getter.values(input.headers, Scope::of(root)))
            }
            _ => None,
        };
        let mut cases = Vec::new();
        for rule in &self.rules {
            let fail = |message: String| MapFailure {
                rule: rule.name.clone(),
                message,
            };
            let elements: Vec<&Value> = match &rule.for_each {
                None => vec![root],
                Some(path) => match path.select(Scope::of(root)).as_slice() {
                    [Value::Array(items)] => items.iter().collect(),
                    nodes => nodes.to_vec(),
                },
            };
            for element in elements {
                let scope = Scope { root, element };
                let types = match (&event_level_types, &self.event_type) {
                    (Some(types), _) => types.clone(),
                    (None, Some(getter)) => getter.values(input.headers, scope),
                    (None, None) => Vec::new(),
                };
                if !rule.matches(&types, scope) {
                    continue;
                }
                if cases.len() >= self.max_cases {
                    return Err(fail(format!(
                        "the event produces more than {} cases (the mapping's max_cases); nothing was enqueued",
                        self.max_cases
                    )));
                }
                let event_type = types.first().cloned();
                let case = self
                    .build_case(rule, scope, input, event_type)
                    .map_err(fail)?;
                total_bytes = total_bytes.saturating_add(stored_size(&case));
                if total_bytes > max_bytes {
                    return Err(fail(format!(
                        "the event's cases exceed {max_bytes} bytes (ingress.max_event_cases_bytes); nothing was enqueued"
                    )));
                }
                cases.push(case);
            }
        }
        Ok(cases)
    }

    fn build_case(
        &self,
        rule: &CompiledRule,
        scope: Scope<'_>,
        input: &EventInput<'_>,
        event_type: Option<String>,
    ) -> Result<CaseRecord, String> {
        let title = rule
            .title
            .render(scope, Missing::Fail)
            .map_err(|e| format!("title: {e}"))?;
        let title = title.trim();
        if title.is_empty() {
            return Err("title: rendered empty (the API requires a title)".into());
        }
        let title = truncate_chars(title, MAX_TITLE_CHARS);
        let data = self.case_data(rule, scope, input, event_type.as_deref())?;
        let labels = rule
            .labels
            .iter()
            .filter_map(|label| {
                let value = label.value.render(scope, Missing::Empty).ok()?;
                let value = value.trim();
                (!value.is_empty()).then(|| Label {
                    key: label.key.clone(),
                    value: value.to_string(),
                    color_hue: label.color_hue,
                })
            })
            .collect();
        Ok(CaseRecord {
            queue: rule.queue.clone(),
            api_key_name: rule.api_key.clone(),
            title,
            data,
            labels,
            meta: CaseMeta {
                source: self.source.clone(),
                mapping_file: self.file.clone(),
                mapping_version: self.version.clone(),
                rule: rule.name.clone(),
                request_id: input.request_id.to_string(),
                delivery_id: input.delivery_id.map(str::to_string),
                event_type,
                received_at_ms: input.received_at_ms,
            },
        })
    }

    /// The case's `data` as JSON text: the rendered template, with the headers and metadata
    /// the rule includes merged in. Written straight from the payload where the template
    /// allows (the common case); otherwise built as a value first.
    fn case_data(
        &self,
        rule: &CompiledRule,
        scope: Scope<'_>,
        input: &EventInput<'_>,
        event_type: Option<&str>,
    ) -> Result<String, String> {
        let included = self.included(rule, input, event_type);
        if !included.is_empty() && !matches!(rule.data, DataTemplate::Object(_)) {
            return serde_json::to_string(&self.data_value(rule, scope, included)?)
                .map_err(|e| format!("data: {e}"));
        }
        let extra: Vec<(&str, &Value)> = included.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = Vec::with_capacity(512);
        rule.data
            .write(scope, &extra, &mut out)
            .map_err(|e| format!("data: {e}"))?;
        String::from_utf8(out).map_err(|e| format!("data: {e}"))
    }

    /// The rendered data as a value, with `included` merged in (a non-object is wrapped as
    /// `{"data": ...}` first).
    fn data_value(
        &self,
        rule: &CompiledRule,
        scope: Scope<'_>,
        included: Vec<(&'static str, Value)>,
    ) -> Result<Value, String> {
        let data = rule.data.render(scope).map_err(|e| format!("data: {e}"))?;
        if included.is_empty() {
            return Ok(data);
        }
        let mut object = match data {
            Value::Object(object) => object,
            other => Map::from_iter([("data".to_string(), other)]),
        };
        for (name, value) in included {
            object.insert(name.to_string(), value);
        }
        Ok(Value::Object(object))
    }

    /// The members `include:` adds to the data, in name order: `_casegate` (metadata) and
    /// `_headers` (the named headers present, never a credential).
    fn included(
        &self,
        rule: &CompiledRule,
        input: &EventInput<'_>,
        event_type: Option<&str>,
    ) -> Vec<(&'static str, Value)> {
        let mut included = Vec::new();
        if rule.include_meta {
            included.push((
                "_casegate",
                serde_json::json!({
                    "source": self.source,
                    "event_type": event_type,
                    "delivery_id": input.delivery_id,
                    "request_id": input.request_id,
                    "received_at_ms": input.received_at_ms,
                }),
            ));
        }
        if !rule.include_headers.is_empty() {
            let credentials = self.verifier.credential_headers();
            let headers: Map<String, Value> = rule
                .include_headers
                .iter()
                .filter(|name| !crate::inbound::is_credential(&credentials, name))
                .filter_map(|name| {
                    input
                        .headers
                        .get(name)
                        .map(|v| (name.clone(), Value::String(v.into())))
                })
                .collect();
            included.push(("_headers", Value::Object(headers)));
        }
        included
    }
}

/// About what one case takes in the buffer: its text fields plus a fixed allowance for the
/// record's structure. Computed from lengths, so checking the bound costs no encoding.
fn stored_size(case: &CaseRecord) -> usize {
    let meta = &case.meta;
    let labels: usize = case
        .labels
        .iter()
        .map(|l| l.key.len() + l.value.len() + 32)
        .sum();
    case.title.len()
        + case.data.len()
        + case.queue.len()
        + labels
        + meta.source.len()
        + meta.mapping_file.len()
        + meta.request_id.len()
        + meta.delivery_id.as_deref().map_or(0, str::len)
        + meta.event_type.as_deref().map_or(0, str::len)
        + 256
}

impl CompiledRule {
    fn matches(&self, event_types: &[String], scope: Scope<'_>) -> bool {
        let event_ok = self.events.is_empty()
            || event_types
                .iter()
                .any(|t| self.events.iter().any(|pattern| event_matches(pattern, t)));
        event_ok && self.filter.as_ref().is_none_or(|f| f.eval(scope))
    }
}

fn event_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

impl DataTemplate {
    /// Compiles a `data` value; an error is the message and, for template errors, the text to
    /// look for in the file.
    fn compile(value: &Value, maps: &ValueMaps) -> Result<DataTemplate, (String, Option<String>)> {
        let template_error = |e: TemplateError| (e.to_string(), e.needle().map(str::to_string));
        Ok(match value {
            Value::String(text)
                if !text.contains("{{") && (text.starts_with('$') || text.starts_with('@')) =>
            {
                DataTemplate::Path(Expr::parse_with(text, maps).map_err(template_error)?)
            }
            Value::String(text) => {
                DataTemplate::Text(Template::parse_with(text, maps).map_err(template_error)?)
            }
            Value::Object(map) => DataTemplate::Object(
                map.iter()
                    .map(|(k, v)| {
                        DataTemplate::compile(v, maps)
                            .map(|t| (k.clone(), t))
                            .map_err(|(e, needle)| (format!("{k}: {e}"), needle))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::Array(items) => DataTemplate::Array(
                items
                    .iter()
                    .map(|item| DataTemplate::compile(item, maps))
                    .collect::<Result<_, _>>()?,
            ),
            literal => DataTemplate::Literal(literal.clone()),
        })
    }

    fn render(&self, scope: Scope<'_>) -> Result<Value, String> {
        Ok(match self {
            DataTemplate::Path(expr) if expr.has_filters() => Value::String(
                expr.render(scope, Missing::Fail)
                    .map_err(|e| e.to_string())?,
            ),
            DataTemplate::Path(expr) => expr.value(scope).ok_or_else(|| matched_nothing(expr))?,
            DataTemplate::Text(template) => Value::String(
                template
                    .render(scope, Missing::Fail)
                    .map_err(|e| e.to_string())?,
            ),
            DataTemplate::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, t)| {
                        t.render(scope)
                            .map(|v| (k.clone(), v))
                            .map_err(|e| format!("{k}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DataTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render(scope))
                    .collect::<Result<_, _>>()?,
            ),
            DataTemplate::Literal(value) => value.clone(),
        })
    }

    /// Writes what [`DataTemplate::render`] returns as compact JSON, byte for byte what
    /// serializing that value gives, without building it: selected values are written where
    /// they are in the payload, not copied into a new tree first. `extra` members (already
    /// sorted by name) are merged into an object template's members in name order, as
    /// inserting them into the rendered `Map` would.
    fn write(
        &self,
        scope: Scope<'_>,
        extra: &[(&str, &Value)],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match self {
            DataTemplate::Path(expr) if expr.has_filters() => write_json(
                out,
                &expr
                    .render(scope, Missing::Fail)
                    .map_err(|e| e.to_string())?,
            ),
            DataTemplate::Path(expr) => expr
                .write_value(scope, out)
                .ok_or_else(|| matched_nothing(expr))?,
            DataTemplate::Text(template) => write_json(
                out,
                &template
                    .render(scope, Missing::Fail)
                    .map_err(|e| e.to_string())?,
            ),
            DataTemplate::Object(fields) => {
                out.push(b'{');
                let mut extra = extra.iter().peekable();
                let mut first = true;
                let mut separate = |out: &mut Vec<u8>, key: &str| {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    write_json(out, key);
                    out.push(b':');
                };
                for (key, template) in fields {
                    while let Some((name, value)) = extra.next_if(|(name, _)| *name < key.as_str())
                    {
                        separate(out, name);
                        write_json(out, *value);
                    }
                    // A member of the same name is replaced by the extra one, but still rendered:
                    // its failure fails the data, as it did when the value was built first.
                    if extra.peek().is_some_and(|(name, _)| *name == key.as_str()) {
                        template
                            .write(scope, &[], &mut Vec::new())
                            .map_err(|e| format!("{key}: {e}"))?;
                        continue;
                    }
                    separate(out, key);
                    template
                        .write(scope, &[], out)
                        .map_err(|e| format!("{key}: {e}"))?;
                }
                for (name, value) in extra {
                    separate(out, name);
                    write_json(out, *value);
                }
                out.push(b'}');
            }
            DataTemplate::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(scope, &[], out)?;
                }
                out.push(b']');
            }
            DataTemplate::Literal(value) => write_json(out, value),
        }
        Ok(())
    }
}

/// Appends `value` as compact JSON, as `serde_json::to_string` writes it.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing a JSON value or a string into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, value);
}

fn matched_nothing(expr: &Expr) -> String {
    format!(
        "path {} matched nothing and has no default (add `?? null` to allow that)",
        expr.describe()
    )
}

/// The Duvo API's queue id pattern: 8-4-4-4-12 hex digits.
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
