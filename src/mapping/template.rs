//! Title, label and data templates: literal text with `{{ <path> [?? <default>] [| filter]... }}`
//! interpolations, parsed once at load.
//!
//! Rendering rules: a string renders as itself, a number or boolean as its JSON text, an object or
//! array as compact JSON, several matches joined with ", ". A path that matches nothing uses its
//! default; without one it is a [`RenderError::Missing`] (titles and data) or renders empty
//! (labels, whose empty values are dropped). `null` renders as the default, or empty.

use serde_json::Value;

use super::path::{CompiledPath, PathError, Scope};

/// A formatting step applied to an interpolated value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Upper,
    Lower,
    Trim,
    /// Keep at most N characters, ending with "…" when cut.
    Truncate(usize),
}

/// One `{{ ... }}`: a path, an optional default and filters.
#[derive(Debug, Clone)]
pub struct Expr {
    pub path: CompiledPath,
    pub default: Option<Value>,
    pub filters: Vec<Filter>,
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
        "in `{{{{ {expr} }}}}`: the default after `??` must be a JSON literal such as \"unknown\", 0 or null"
    )]
    BadDefault { expr: String },
    #[error(
        "in `{{{{ {expr} }}}}`: unknown filter `{filter}` (known: upper, lower, trim, truncate(N))"
    )]
    UnknownFilter { expr: String, filter: String },
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

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
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
            parts.push(Part::Expr(Expr::parse(inner)?));
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
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(&e.path),
            Part::Literal(_) => None,
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
    /// Parses `<path> [?? <default>] [| filter]...`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let segments = split_top_level(text);
        let (head, filters) = segments
            .split_first()
            .expect("split returns at least one segment");
        let (path_text, default_text) = match find_top_level(head, "??") {
            Some(at) => (&head[..at], Some(head[at + 2..].trim())),
            None => (head.as_str(), None),
        };
        let path = CompiledPath::parse(path_text).map_err(|source| TemplateError::Path {
            expr: text.to_string(),
            source,
        })?;
        let default = default_text
            .map(|d| {
                serde_json::from_str::<Value>(d).map_err(|_| TemplateError::BadDefault {
                    expr: text.to_string(),
                })
            })
            .transpose()?;
        let filters = filters
            .iter()
            .map(|f| {
                parse_filter(f.trim()).ok_or_else(|| TemplateError::UnknownFilter {
                    expr: text.to_string(),
                    filter: f.trim().to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Expr {
            path,
            default,
            filters,
        })
    }

    /// The raw value(s) the expression selects, before filters: `None` when nothing matched and
    /// there is no default.
    pub fn value(&self, scope: Scope<'_>) -> Option<Value> {
        let nodes = self.path.select(scope);
        match nodes.as_slice() {
            [] => self.default.clone(),
            [Value::Null] if self.default.is_some() => self.default.clone(),
            [one] => Some((*one).clone()),
            many => Some(Value::Array(many.iter().map(|v| (*v).clone()).collect())),
        }
    }

    pub fn render(&self, scope: Scope<'_>, missing: Missing) -> Result<String, RenderError> {
        let nodes = self.path.select(scope);
        let text = match nodes.as_slice() {
            [] | [Value::Null] => match (&self.default, missing, nodes.is_empty()) {
                (Some(default), _, _) => to_text(default),
                (None, Missing::Fail, true) => {
                    return Err(RenderError::Missing(self.path.as_str().to_string()));
                }
                (None, _, _) => String::new(),
            },
            [one] => to_text(one),
            many => many
                .iter()
                .map(|v| to_text(v))
                .collect::<Vec<_>>()
                .join(", "),
        };
        Ok(self
            .filters
            .iter()
            .fold(text, |text, filter| filter.apply(text)))
    }

    pub fn has_filters(&self) -> bool {
        !self.filters.is_empty()
    }
}

impl Filter {
    fn apply(&self, text: String) -> String {
        match self {
            Filter::Upper => text.to_uppercase(),
            Filter::Lower => text.to_lowercase(),
            Filter::Trim => text.trim().to_string(),
            Filter::Truncate(max) => truncate_chars(&text, *max),
        }
    }
}

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

fn parse_filter(text: &str) -> Option<Filter> {
    match text {
        "upper" => Some(Filter::Upper),
        "lower" => Some(Filter::Lower),
        "trim" => Some(Filter::Trim),
        _ => {
            let arg = text.strip_prefix("truncate(")?.strip_suffix(')')?;
            arg.trim().parse().ok().map(Filter::Truncate)
        }
    }
}

/// Splits on `|` that is outside brackets and quotes and not part of `||` (a JSONPath "or").
fn split_top_level(text: &str) -> Vec<String> {
    let mut segments = vec![String::new()];
    let mut scanner = Scanner::default();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if scanner.at_top(c) && c == '|' {
            if chars.get(i + 1) == Some(&'|') {
                segments.last_mut().expect("non-empty").push_str("||");
                i += 2;
                continue;
            }
            segments.push(String::new());
        } else {
            segments.last_mut().expect("non-empty").push(c);
        }
        i += 1;
    }
    segments
}

/// Byte offset of `needle` outside brackets and quotes.
fn find_top_level(text: &str, needle: &str) -> Option<usize> {
    let mut scanner = Scanner::default();
    for (at, c) in text.char_indices() {
        if scanner.at_top(c) && text[at..].starts_with(needle) {
            return Some(at);
        }
    }
    None
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
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, payload: &Value) -> Result<String, RenderError> {
        Template::parse(template)
            .unwrap()
            .render(Scope::of(payload), Missing::Fail)
    }

    #[test]
    fn rendering_table() {
        let payload = json!({
            "name": "#1001", "total": 199.5, "paid": true, "tags": ["a", "b"],
            "customer": {"email": "Ann@Example.com", "note": null}, "pad": "  x  ",
            "items": [{"q": 1}, {"q": 5}]
        });
        let cases = [
            ("Order {{ $.name }}", "Order #1001"),
            ("{{$.total}} / {{ $.paid }}", "199.5 / true"),
            ("{{ $.customer.email | lower }}", "ann@example.com"),
            ("{{ $.customer.email | upper | truncate(5) }}", "ANN@…"),
            ("{{ $.customer.phone ?? \"unknown\" }}", "unknown"),
            ("{{ $.customer.note ?? \"none\" }}", "none"),
            ("[{{ $.customer.note }}]", "[]"),
            ("{{ $.tags }}", "[\"a\",\"b\"]"),
            ("{{ $.tags[*] }}", "a, b"),
            ("{{ $.pad | trim }}", "x"),
            ("{{ $.items[?@.q > 2 || @.q < 0].q }}", "5"),
            ("{{ $.missing ?? 0 }}", "0"),
            ("no interpolation", "no interpolation"),
            ("{{ $['a|b'] ?? \"x|y\" }}", "x|y"),
        ];
        for (template, expected) in cases {
            assert_eq!(
                render(template, &payload).unwrap(),
                expected,
                "template {template:?}"
            );
        }
    }

    #[test]
    fn a_missing_path_without_default_fails_or_renders_empty_as_asked() {
        let template = Template::parse("x{{ $.nope }}").unwrap();
        let payload = json!({});
        assert_eq!(
            template
                .render(Scope::of(&payload), Missing::Fail)
                .unwrap_err(),
            RenderError::Missing("$.nope".into())
        );
        assert_eq!(
            template
                .render(Scope::of(&payload), Missing::Empty)
                .unwrap(),
            "x"
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases: [(&str, &str); 6] = [
            ("Order {{ $.name", "never closed"),
            ("{{ }}", "empty"),
            ("{{ name }}", "starts with `$`"),
            ("{{ $.a[ }}", "invalid JSONPath"),
            ("{{ $.a ?? unknown }}", "JSON literal"),
            ("{{ $.a | shout }}", "unknown filter `shout`"),
        ];
        for (template, fragment) in cases {
            let error = Template::parse(template).unwrap_err().to_string();
            assert!(error.contains(fragment), "{template:?} gave {error:?}");
        }
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_chars("héllo wörld", 5), "héll…");
        assert_eq!(truncate_chars("日本語のテキスト", 3), "日本…");
        assert_eq!(truncate_chars("short", 10), "short");
        assert_eq!(truncate_chars("abc", 0), "");
    }
}
