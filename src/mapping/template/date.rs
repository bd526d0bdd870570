//! The `date(...)` filter: reading dates in the formats providers send, and strftime-like
//! formats translated into `time` format descriptions.

use super::*;

impl DateFormat {
    /// Compiles a strftime-like format (see [`strftime_to_description`]).
    pub fn parse(pattern: &str) -> Result<DateFormat, String> {
        if pattern.len() > MAX_DATE_FORMAT_BYTES {
            return Err(format!(
                "the format is {} bytes long; the limit is {MAX_DATE_FORMAT_BYTES}",
                pattern.len()
            ));
        }
        let description = strftime_to_description(pattern)?;
        let items = time::format_description::parse_owned::<1>(&description)
            .map_err(|e| format!("cannot compile {pattern:?}: {e}"))?;
        Ok(DateFormat { items })
    }

    /// The value formatted, or its plain text when it is not a date.
    pub(super) fn apply(&self, value: &Value) -> String {
        parse_date(value)
            .and_then(|date| date.format(&self.items).ok())
            .unwrap_or_else(|| to_text(value))
    }
}

/// An ISO 8601 date-time without offset, optionally with fractional seconds.
static NAIVE_DATE_TIME: std::sync::LazyLock<OwnedFormatItem> = std::sync::LazyLock::new(|| {
    time::format_description::parse_owned::<2>(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]",
    )
    .expect("a valid format description")
});

/// Reads a date: an RFC 3339 or RFC 2822 string, an ISO date-time without offset (read as UTC,
/// as WooCommerce sends `date_created_gmt`), or Unix seconds or milliseconds (a number or a
/// string of digits; see [`UNIX_MILLIS_FROM`]).
pub fn parse_date(value: &Value) -> Option<OffsetDateTime> {
    let unix = |n: i64| {
        if n.unsigned_abs() >= UNIX_MILLIS_FROM as u64 {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(n) * 1_000_000).ok()
        } else {
            OffsetDateTime::from_unix_timestamp(n).ok()
        }
    };
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(i) => unix(i),
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .and_then(|f| unix(f.trunc() as i64)),
        },
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty()
                && s.trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                return s.parse().ok().and_then(unix);
            }
            OffsetDateTime::parse(s, &Rfc3339)
                .or_else(|_| OffsetDateTime::parse(s, &Rfc2822))
                .ok()
                .or_else(|| {
                    time::PrimitiveDateTime::parse(s, &*NAIVE_DATE_TIME)
                        .ok()
                        .map(|p| p.assume_utc())
                })
        }
        _ => None,
    }
}

/// Translates a strftime-like format into a `time` format description (version 1). The subset:
/// `%Y %y %m %d %e %H %I %M %S %p %b %h %B %a %A %j %z %:z %F %T %R %%`; any other `%`
/// sequence is an error, everything else is literal text.
pub fn strftime_to_description(pattern: &str) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() * 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let spec = match chars.next() {
                    Some(':') => match chars.next() {
                        Some('z') => ":z".to_string(),
                        other => format!(":{}", other.map(String::from).unwrap_or_default()),
                    },
                    Some(other) => other.to_string(),
                    None => return Err("the format ends with a lone `%`".into()),
                };
                out.push_str(match spec.as_str() {
                    "Y" => "[year]",
                    "y" => "[year repr:last_two]",
                    "m" => "[month]",
                    "d" => "[day]",
                    "e" => "[day padding:space]",
                    "H" => "[hour]",
                    "I" => "[hour repr:12]",
                    "M" => "[minute]",
                    "S" => "[second]",
                    "p" => "[period]",
                    "b" | "h" => "[month repr:short]",
                    "B" => "[month repr:long]",
                    "a" => "[weekday repr:short]",
                    "A" => "[weekday]",
                    "j" => "[ordinal]",
                    "z" => "[offset_hour sign:mandatory][offset_minute]",
                    ":z" => "[offset_hour sign:mandatory]:[offset_minute]",
                    "F" => "[year]-[month]-[day]",
                    "T" => "[hour]:[minute]:[second]",
                    "R" => "[hour]:[minute]",
                    "%" => "%",
                    _ => {
                        return Err(format!(
                            "unknown date format `%{spec}` (known: %Y %y %m %d %e %H %I %M %S %p %b %h %B %a %A %j %z %:z %F %T %R %%)"
                        ));
                    }
                });
            }
            '[' => out.push_str("[["),
            other => out.push(other),
        }
    }
    Ok(out)
}
