//! The filters: parsing one as written (`name` or `name(args)`) and applying it to a value.

use super::*;

impl Filter {
    pub(super) fn apply<'a>(&self, current: Current<'a>) -> Current<'a> {
        match self {
            Filter::Join(separator) => Current::Text(match current {
                Current::Many(values) => join_text(&values, separator),
                Current::One(Value::Array(items)) => {
                    join_text(&items.iter().collect::<Vec<_>>(), separator)
                }
                other => other.into_text(),
            }),
            Filter::Json => Current::Text(match current {
                Current::Absent => String::new(),
                Current::One(value) => value.to_string(),
                Current::Many(values) => serde_json::to_string(&values).unwrap_or_default(),
                Current::Text(text) => Value::String(text).to_string(),
            }),
            Filter::Date(format) => Current::Text(match current {
                Current::Absent => String::new(),
                Current::One(value) => format.apply(value),
                Current::Many(values) => values
                    .iter()
                    .map(|v| format.apply(v))
                    .collect::<Vec<_>>()
                    .join(", "),
                Current::Text(text) => format.apply(&Value::String(text)),
            }),
            Filter::Default(fallback) => match current.into_text() {
                text if text.is_empty() => Current::Text(fallback.clone()),
                text => Current::Text(text),
            },
            other => Current::Text(other.apply_text(current.into_text())),
        }
    }

    fn apply_text(&self, text: String) -> String {
        match self {
            Filter::Upper => text.to_uppercase(),
            Filter::Lower => text.to_lowercase(),
            Filter::Trim => text.trim().to_string(),
            Filter::Truncate(max) => truncate_chars(&text, *max),
            Filter::Replace(from, to) => {
                let limit = match to.len().checked_sub(from.len()) {
                    Some(growth) if growth > 0 => MAX_REPLACE_GROWTH / growth,
                    _ => usize::MAX,
                };
                text.replacen(from.as_str(), to, limit)
            }
            Filter::Map { values, fallback } => match values.get(&text) {
                Some(label) => label.clone(),
                None => fallback.clone().unwrap_or(text),
            },
            Filter::Join(_) | Filter::Json | Filter::Date(_) | Filter::Default(_) => text,
        }
    }
}

/// Parses one filter: a name, optionally followed by JSON arguments in parentheses.
pub(super) fn parse_filter(
    text: &str,
    expr: &str,
    maps: &ValueMaps,
) -> Result<Filter, TemplateError> {
    let bad = |message: String| TemplateError::BadFilter {
        expr: expr.to_string(),
        filter: text.to_string(),
        message,
    };
    let (name, args) = match text.find('(') {
        Some(open) => {
            let inner = text[open + 1..]
                .strip_suffix(')')
                .ok_or_else(|| bad("the arguments are not closed with `)`".into()))?;
            let args: Vec<Value> = serde_json::from_str(&format!("[{inner}]")).map_err(|_| {
                bad(
                    "arguments are JSON literals separated by commas, e.g. (\"a\", \"b\") or (20)"
                        .into(),
                )
            })?;
            (text[..open].trim(), Some(args))
        }
        None => (text, None),
    };
    let strings = |count: std::ops::RangeInclusive<usize>,
                   what: &str|
     -> Result<Vec<String>, TemplateError> {
        let args = args.clone().unwrap_or_default();
        if !count.contains(&args.len()) {
            return Err(bad(format!("takes {what}, got {} argument(s)", args.len())));
        }
        args.into_iter()
            .map(|a| match a {
                Value::String(s) => Ok(s),
                other => Err(bad(format!("takes {what}; {other} is not a string"))),
            })
            .collect()
    };
    let no_args = |filter: Filter| match &args {
        None => Ok(filter),
        Some(_) => Err(bad(format!("`{name}` takes no arguments"))),
    };
    match name {
        "upper" => no_args(Filter::Upper),
        "lower" => no_args(Filter::Lower),
        "trim" => no_args(Filter::Trim),
        "json" => no_args(Filter::Json),
        "truncate" => match args.as_deref() {
            Some([n]) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Filter::Truncate)
                .ok_or_else(|| bad(format!("takes one whole number of characters, not {n}"))),
            _ => Err(bad(
                "takes one argument, the number of characters (truncate(80))".into(),
            )),
        },
        "join" => {
            let separator = strings(1..=1, "one argument, the separator (join(\", \"))")?.remove(0);
            if separator.len() > MAX_SEPARATOR_BYTES {
                return Err(bad(format!(
                    "the separator may be at most {MAX_SEPARATOR_BYTES} bytes"
                )));
            }
            Ok(Filter::Join(separator))
        }
        "date" => {
            let pattern =
                strings(1..=1, "one argument, the format (date(\"%Y-%m-%d\"))")?.remove(0);
            DateFormat::parse(&pattern).map(Filter::Date).map_err(bad)
        }
        "default" => {
            let text = strings(1..=1, "one argument, the text (default(\"none\"))")?.remove(0);
            Ok(Filter::Default(text))
        }
        "replace" => {
            let mut pair = strings(2..=2, "two arguments (replace(\"from\", \"to\"))")?;
            let to = pair.pop().expect("two");
            let from = pair.pop().expect("two");
            if from.is_empty() {
                return Err(bad("the text to replace may not be empty".into()));
            }
            Ok(Filter::Replace(from, to))
        }
        "map" => {
            let mut names = strings(
                1..=2,
                "the name of a map under `maps:` and an optional fallback (map(\"status\", \"Other\"))",
            )?;
            let fallback = (names.len() == 2).then(|| names.pop().expect("two"));
            let map_name = names.pop().expect("one");
            let values = maps.get(&map_name).ok_or_else(|| {
                bad(format!(
                    "no map named {map_name:?} under `maps:` (defined: {})",
                    if maps.is_empty() {
                        "none".to_string()
                    } else {
                        maps.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ))
            })?;
            Ok(Filter::Map {
                values: Arc::new(values.clone()),
                fallback,
            })
        }
        _ => Err(TemplateError::UnknownFilter {
            expr: expr.to_string(),
            filter: text.to_string(),
        }),
    }
}
