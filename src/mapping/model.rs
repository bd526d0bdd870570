//! The mapping file format, as operators write it (YAML, one file per source).
//!
//! YAML because it is what operators already edit for their infrastructure, it embeds JSON
//! example payloads verbatim, and serde_yaml_ng reports the line and column of every error.
//! Every struct denies unknown fields, so a misspelt key fails `casegate check` instead of being
//! ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::condition::ConditionSpec;
use crate::verify::VerifySpec;

/// One mapping file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// The `{source}` in `POST /hooks/{source}`; defaults to the file name without extension.
    #[serde(default)]
    pub source: Option<String>,
    /// Free text for the people who edit the file.
    #[serde(default)]
    pub description: Option<String>,
    /// How requests from this source are authenticated.
    pub verify: VerifySpec,
    /// Where the sender's unique delivery id is, for duplicate detection.
    #[serde(default)]
    pub delivery_id: Option<FieldRef>,
    /// How long a delivery id is remembered; defaults to `ingress.dedupe_ttl_secs`.
    #[serde(default)]
    pub dedupe_ttl_secs: Option<u64>,
    /// Most cases one event may produce (all rules together); an event beyond it is
    /// dead-lettered whole. Defaults to 1000.
    #[serde(default)]
    pub max_cases: Option<usize>,
    /// Where the event type is (a header such as X-Shopify-Topic or a path such as `$.type`).
    #[serde(default)]
    pub event_type: Option<FieldRef>,
    /// Named value maps for the `map("name")` template filter: each turns a value (a status
    /// code, say) into readable text, e.g. `payment: {paid: Paid, pending: Awaiting payment}`.
    /// Keys and values are text (quote numbers and booleans in YAML).
    #[serde(default)]
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Every rule whose `when` matches produces cases.
    pub rules: Vec<RuleSpec>,
    /// Sample requests with the cases they must produce; `casegate check` runs them.
    #[serde(default)]
    pub examples: Vec<ExampleSpec>,
}

/// A value read from a request header or the payload (exactly one of the two).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldRef {
    /// A request header's name (case-insensitive), e.g. `X-Shopify-Topic`.
    pub header: Option<String>,
    /// A JSONPath into the payload (`$...`), or into the `for_each` element (`@...`); `??`
    /// tries further paths in turn (`@.subscriptionType ?? @.eventType`).
    pub path: Option<String>,
}

/// One rule: which events, which queue, and how to build each case.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Names the rule in errors, metrics and dead letters.
    pub name: String,
    /// Which events the rule applies to; every event when absent.
    #[serde(default)]
    pub when: Option<WhenSpec>,
    /// The Duvo queue id (a UUID; may be `${ENV}`).
    pub queue: String,
    /// Name of an API key from the config's key set; the default key when absent.
    #[serde(default)]
    pub api_key: Option<String>,
    /// A path selecting an array: one case per element, addressable as `@`.
    #[serde(default)]
    pub for_each: Option<String>,
    /// Template of the case title (at most 500 characters are sent): text with
    /// `{{ $.path ?? $.other ?? "default" | filter }}` interpolations; filters are upper, lower,
    /// trim, truncate(N), join("sep"), json, date("%Y-%m-%d"), default("x"),
    /// replace("a", "b") and map("name", "fallback").
    pub title: String,
    /// The case data: a path (`$` whole payload, `@` element) or an object of templates/paths.
    /// Defaults to `@`: the element, or the whole payload without `for_each`.
    #[serde(default)]
    pub data: Option<Value>,
    /// Extra context added to the data object.
    #[serde(default)]
    pub include: Option<IncludeSpec>,
    /// Labels attached to each case.
    #[serde(default)]
    pub labels: Vec<LabelSpec>,
}

/// Which events a rule applies to; both parts must match when both are given.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// Event type(s) to accept; a trailing `*` matches a prefix (`contact.*`).
    #[serde(default)]
    pub event: Option<OneOrMany>,
    /// A condition on payload values (`all`, `any`, `not`, or `path` with one test).
    #[serde(default)]
    pub filter: Option<ConditionSpec>,
}

/// One string or a list of strings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// Context copied into the case data.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncludeSpec {
    /// Request headers to copy under `_headers` (credential headers are never copied).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Adds `_casegate: {source, event_type, delivery_id, request_id, received_at_ms}`.
    #[serde(default)]
    pub meta: bool,
}

/// A label on the case, e.g. `{key: currency, value: '{{ $.currency }}', color_hue: 140}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// The label's name.
    pub key: String,
    /// Template; a label whose value renders empty is left out.
    pub value: String,
    /// Hue of the label's colour, 0-360.
    #[serde(default)]
    #[schemars(range(max = 360))]
    pub color_hue: Option<u16>,
}

/// A sample request and what it must produce.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExampleSpec {
    /// What the example shows, printed by `casegate check`.
    pub name: String,
    /// The payload inline...
    #[serde(default)]
    pub payload: Option<Value>,
    /// ...or in a JSON file, relative to the mapping file.
    #[serde(default)]
    pub payload_file: Option<PathBuf>,
    /// Request headers sent with the payload.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The cases expected, in order; empty means the event is filtered out.
    #[serde(default)]
    pub expect: Vec<ExpectedCase>,
    /// Instead of cases: the mapping must fail with a message containing this text.
    #[serde(default)]
    pub expect_error: Option<String>,
}

/// Fields of an expected case; the ones left out are not compared.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCase {
    /// The rule that made the case.
    #[serde(default)]
    pub rule: Option<String>,
    /// The queue id, after `${ENV}` interpolation.
    #[serde(default)]
    pub queue: Option<String>,
    /// The rendered title.
    pub title: String,
    /// Compared with the case data decoded from its JSON string.
    #[serde(default)]
    pub data: Option<Value>,
    /// The labels, in order (labels that rendered empty are left out).
    #[serde(default)]
    #[schemars(with = "Option<Vec<LabelSpec>>")]
    pub labels: Option<Vec<crate::case::Label>>,
}
