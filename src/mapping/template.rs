//! Title, label and data templates: literal text with
//! `{{ <source> [?? <source>]... [| filter]... }}` interpolations, parsed once at load.
//!
//! A source is a path (`$...`, `@...`) or, last in a `??` chain, a JSON literal. The first path
//! that matches something other than `null` wins; a literal always does. Rendering rules: a
//! string renders as itself, a number or boolean as its JSON text, an object or array as compact
//! JSON, several matches joined with ", ". When nothing matches and there is no literal (nor a
//! `default(...)` filter) a title or data string is a [`RenderError::Missing`], a label renders
//! empty (and is dropped). `null` renders as the default, or empty.
//!
//! Filters run left to right on the value. `join`, `json` and `date` see the matched JSON
//! (several matches, arrays, numbers); the others see its text. Every filter's output is
//! bounded: `join` separators are at most [`MAX_SEPARATOR_BYTES`], `replace` adds at most
//! [`MAX_REPLACE_GROWTH`] bytes, and date formats are at most [`MAX_DATE_FORMAT_BYTES`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::OwnedFormatItem;
use time::format_description::well_known::{Rfc2822, Rfc3339};

use super::path::{CompiledPath, PathError, Scope};

/// Longest `join` separator, in bytes.
pub const MAX_SEPARATOR_BYTES: usize = 16;
/// Most bytes one `replace` may add to its input (later occurrences are left as they are).
pub const MAX_REPLACE_GROWTH: usize = 64 * 1024;
/// Longest `date` format, in bytes.
pub const MAX_DATE_FORMAT_BYTES: usize = 64;
/// Unix timestamps at or above this magnitude are read as milliseconds (1e11 seconds is the
/// year 5138; 1e11 milliseconds is March 1973).
pub const UNIX_MILLIS_FROM: i64 = 100_000_000_000;

/// Named value maps of a mapping file (`maps:`), for the `map("name")` filter.
pub type ValueMaps = BTreeMap<String, BTreeMap<String, String>>;

/// The filters a template knows, as written; shown in errors.
const KNOWN_FILTERS: &str = "upper, lower, trim, truncate(N), join(\"sep\"), json, date(\"%Y-%m-%d\"), default(\"text\"), replace(\"from\", \"to\"), map(\"name\"[, \"fallback\"])";

/// A formatting step applied to an interpolated value.
#[derive(Debug, Clone)]
pub enum Filter {
    Upper,
    Lower,
    Trim,
    /// Keep at most N characters, ending with "…" when cut.
    Truncate(usize),
    /// Several matches (or an array's elements) joined with this separator.
    Join(String),
    /// Compact JSON of the value.
    Json,
    /// A date (RFC 3339, RFC 2822, or Unix seconds/milliseconds) formatted; anything that is
    /// not a date is left as it is.
    Date(DateFormat),
    /// This text when the value renders empty (also stands in for a path that matched nothing).
    Default(String),
    /// Every occurrence of the first text replaced by the second.
    Replace(String, String),
    /// The text looked up in a value map; unknown values become the fallback, or stay as they are.
    Map {
        values: Arc<BTreeMap<String, String>>,
        fallback: Option<String>,
    },
}

/// A compiled `date(...)` format: a strftime-like text as a `time` format description.
#[derive(Debug, Clone)]
pub struct DateFormat {
    items: OwnedFormatItem,
}

/// One alternative of a `??` chain.
#[derive(Debug, Clone)]
enum Source {
    Path(CompiledPath),
    Literal(Value),
}

/// One `{{ ... }}`: paths tried in order, an optional literal default, and filters.
#[derive(Debug, Clone)]
pub struct Expr {
    sources: Vec<Source>,
    filters: Vec<Filter>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Expr(Expr),
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` at character {0} is never closed with `}}}}`")]
    Unclosed(usize),
    #[error("empty `{{{{ }}}}` at character {0}")]
    Empty(usize),
    #[error("in `{{{{ {expr} }}}}`: {source}")]
    Path { expr: String, source: PathError },
    #[error(
        "in `{{{{ {expr} }}}}`: after `??` comes another path ($... or @...) or a JSON literal such as \"unknown\", 0 or null"
    )]
    BadDefault { expr: String },
    #[error(
        "in `{{{{ {expr} }}}}`: the literal default {literal} must come last in the `??` chain (nothing after it is ever used)"
    )]
    LiteralNotLast { expr: String, literal: String },
    #[error("in `{{{{ {expr} }}}}`: unknown filter `{filter}` (known: {KNOWN_FILTERS})")]
    UnknownFilter { expr: String, filter: String },
    #[error("in `{{{{ {expr} }}}}`: filter `{filter}`: {message}")]
    BadFilter {
        expr: String,
        filter: String,
        message: String,
    },
}

impl TemplateError {
    /// The text to look for in the mapping file to say where the error is.
    pub fn needle(&self) -> Option<&str> {
        match self {
            TemplateError::UnknownFilter { filter, .. }
            | TemplateError::BadFilter { filter, .. } => Some(filter),
            TemplateError::Path { expr, .. }
            | TemplateError::BadDefault { expr }
            | TemplateError::LiteralNotLast { expr, .. } => Some(expr),
            TemplateError::Unclosed(_) | TemplateError::Empty(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("path {0} matched nothing and has no default (add `?? \"...\"` to give one)")]
    Missing(String),
}

/// What to do when a path without a default matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Fail,
    Empty,
}

static NULL: Value = Value::Null;

/// What the `??` chain resolved to.
enum Resolved<'a> {
    /// One or more matches (not a lone `null`).
    Nodes(Vec<&'a Value>),
    /// The literal default.
    Literal(&'a Value),
    /// Nothing better than `null`.
    Null,
    /// Every path matched nothing, and there is no literal.
    Nothing,
}

/// The value flowing through the filters.
enum Current<'a> {
    /// Nothing matched (a label, or a `default(...)` filter follows): empty text, also for `json`.
    Absent,
    One(&'a Value),
    Many(Vec<&'a Value>),
    Text(String),
}

impl Current<'_> {
    fn into_text(self) -> String {
        match self {
            Current::Absent => String::new(),
            Current::One(value) => to_text(value),
            Current::Many(values) => join_text(&values, ", "),
            Current::Text(text) => text,
        }
    }
}

impl Template {
    /// Parses a template that uses no value map.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        Template::parse_with(text, &ValueMaps::new())
    }

    /// Parses a template whose `map(...)` filters may name the file's value maps.
    pub fn parse_with(text: &str, maps: &ValueMaps) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let inner_start = open + 2;
            let close = rest[inner_start..]
                .find("}}")
                .ok_or(TemplateError::Unclosed(offset + open))?;
            let inner = rest[inner_start..inner_start + close].trim();
            if inner.is_empty() {
                return Err(TemplateError::Empty(offset + open));
            }
            parts.push(Part::Expr(Expr::parse_with(inner, maps)?));
            let consumed = inner_start + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// True when the template has no interpolation.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Every path the template reads.
    pub fn paths(&self) -> impl Iterator<Item = &CompiledPath> {
        self.parts.iter().flat_map(|p| match p {
            Part::Expr(e) => e.paths().collect::<Vec<_>>(),
            Part::Literal(_) => Vec::new(),
        })
    }

    pub fn render(&self, scope: Scope<'_>, missing: Missing) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Expr(expr) => out.push_str(&expr.render(scope, missing)?),
            }
        }
        Ok(out)
    }
}

impl Expr {
    /// Parses `<source> [?? <source>]... [| filter]...` without value maps.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        Expr::parse_with(text, &ValueMaps::new())
    }

    /// Parses `<source> [?? <source>]... [| filter]...`; `map(...)` may name one of `maps`.
    pub fn parse_with(text: &str, maps: &ValueMaps) -> Result<Self, TemplateError> {
        let segments = split_top_level(text, "|");
        let (head, filters) = segments
            .split_first()
            .expect("split returns at least one segment");
        let alternatives = split_top_level(head, "??");
        let mut sources = Vec::with_capacity(alternatives.len());
        let last = alternatives.len() - 1;
        for (i, alternative) in alternatives.iter().enumerate() {
            let alternative = alternative.trim();
            let source = if i == 0 || alternative.starts_with(['$', '@']) {
                Source::Path(CompiledPath::parse(alternative).map_err(|source| {
                    TemplateError::Path {
                        expr: text.to_string(),
                        source,
                    }
                })?)
            } else {
                let literal = serde_json::from_str::<Value>(alternative).map_err(|_| {
                    TemplateError::BadDefault {
                        expr: text.to_string(),
                    }
                })?;
                if i != last {
                    return Err(TemplateError::LiteralNotLast {
                        expr: text.to_string(),
                        literal: alternative.to_string(),
                    });
                }
                Source::Literal(literal)
            };
            sources.push(source);
        }
        let filters = filters
            .iter()
            .map(|f| parse_filter(f.trim(), text, maps))
            .collect::<Result<_, _>>()?;
        Ok(Expr { sources, filters })
    }

    /// Every path of the `??` chain, in order.
    pub fn paths(&self) -> impl Iterator<Item = &CompiledPath> {
        self.sources.iter().filter_map(|s| match s {
            Source::Path(path) => Some(path),
            Source::Literal(_) => None,
        })
    }

    /// The paths as written, joined by ` ?? `, for messages.
    pub fn describe(&self) -> String {
        self.paths()
            .map(CompiledPath::as_str)
            .collect::<Vec<_>>()
            .join(" ?? ")
    }

    fn resolve<'a>(&'a self, scope: Scope<'a>) -> Resolved<'a> {
        let mut saw_null = false;
        for source in &self.sources {
            match source {
                Source::Literal(value) => return Resolved::Literal(value),
                Source::Path(path) => {
                    let nodes = path.select(scope);
                    match nodes.as_slice() {
                        [] => {}
                        [Value::Null] => saw_null = true,
                        _ => return Resolved::Nodes(nodes),
                    }
                }
            }
        }
        if saw_null {
            Resolved::Null
        } else {
            Resolved::Nothing
        }
    }

    /// The raw value(s) the expression selects, before filters: `None` when no path matched and
    /// there is no default.
    pub fn value(&self, scope: Scope<'_>) -> Option<Value> {
        match self.resolve(scope) {
            Resolved::Nodes(nodes) => Some(match nodes.as_slice() {
                [one] => (*one).clone(),
                many => Value::Array(many.iter().map(|v| (*v).clone()).collect()),
            }),
            Resolved::Literal(value) => Some(value.clone()),
            Resolved::Null => Some(Value::Null),
            Resolved::Nothing => None,
        }
    }

    /// Writes [`Expr::value`] as compact JSON without copying what it selects; `None` (and
    /// nothing written) when it has no value.
    pub fn write_value(&self, scope: Scope<'_>, out: &mut Vec<u8>) -> Option<()> {
        let write = super::write_json::<Value>;
        match self.resolve(scope) {
            Resolved::Nodes(nodes) => match nodes.as_slice() {
                [one] => write(out, one),
                many => {
                    out.push(b'[');
                    for (i, node) in many.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write(out, node);
                    }
                    out.push(b']');
                }
            },
            Resolved::Literal(value) => write(out, value),
            Resolved::Null => out.extend_from_slice(b"null"),
            Resolved::Nothing => return None,
        }
        Some(())
    }

    pub fn render(&self, scope: Scope<'_>, missing: Missing) -> Result<String, RenderError> {
        let start = match self.resolve(scope) {
            Resolved::Nodes(mut nodes) if nodes.len() == 1 => Current::One(nodes.remove(0)),
            Resolved::Nodes(nodes) => Current::Many(nodes),
            Resolved::Literal(value) => Current::One(value),
            Resolved::Null => Current::One(&NULL),
            Resolved::Nothing => {
                let defaulted = self.filters.iter().any(|f| matches!(f, Filter::Default(_)));
                if missing == Missing::Fail && !defaulted {
                    return Err(RenderError::Missing(self.describe()));
                }
                Current::Absent
            }
        };
        Ok(self
            .filters
            .iter()
            .fold(start, |current, filter| filter.apply(current))
            .into_text())
    }

    pub fn has_filters(&self) -> bool {
        !self.filters.is_empty()
    }
}

mod date;
mod filters;
pub use date::{parse_date, strftime_to_description};
use filters::parse_filter;

/// Cuts `text` to at most `max` characters on a character boundary, ending with "…" when cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn to_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn join_text(values: &[&Value], separator: &str) -> String {
    values
        .iter()
        .map(|v| to_text(v))
        .collect::<Vec<_>>()
        .join(separator)
}

/// Splits on `separator` outside brackets, parentheses and quotes. A `|` that is part of `||`
/// (a JSONPath "or") does not split.
pub(crate) fn split_top_level(text: &str, separator: &str) -> Vec<String> {
    let mut segments = vec![String::new()];
    let mut scanner = Scanner::default();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let top = scanner.at_top(c);
        if top && rest.starts_with("||") && separator == "|" {
            segments.last_mut().expect("non-empty").push_str("||");
            scanner.at_top('|');
            rest = &rest[2..];
            continue;
        }
        if top && rest.starts_with(separator) {
            for extra in separator.chars().skip(1) {
                scanner.at_top(extra);
            }
            segments.push(String::new());
            rest = &rest[separator.len()..];
            continue;
        }
        segments.last_mut().expect("non-empty").push(c);
        rest = &rest[c.len_utf8()..];
    }
    segments
}

/// Tracks bracket depth and string literals while scanning an expression.
#[derive(Default)]
struct Scanner {
    depth: usize,
    quote: Option<char>,
    escaped: bool,
}

impl Scanner {
    /// Feeds `c`; true when `c` itself stands at top level (outside brackets and quotes).
    fn at_top(&mut self, c: char) -> bool {
        if let Some(q) = self.quote {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == q {
                self.quote = None;
            }
            return false;
        }
        match c {
            '\'' | '"' => {
                self.quote = Some(c);
                false
            }
            '[' | '(' => {
                self.depth += 1;
                false
            }
            ']' | ')' => {
                self.depth = self.depth.saturating_sub(1);
                false
            }
            _ => self.depth == 0,
        }
    }
}

#[cfg(test)]
mod tests;
