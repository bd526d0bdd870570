//! Compiling a mapping file: parse the YAML, resolve secrets and queue ids, parse every path
//! and template once, and point at the line and column of anything wrong.

use super::*;

impl CompiledMapping {
    /// Parses and compiles one mapping file's text.
    pub fn compile(
        path: &Path,
        text: &str,
        env: &Env,
    ) -> Result<CompiledMapping, MappingLoadError> {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some((line, column, message)) = duplicate_key(text) {
            return Err(MappingLoadError::Syntax {
                file,
                line,
                column,
                message,
            });
        }
        let raw: MappingFile = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            MappingLoadError::Syntax {
                file: file.clone(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let invalid =
            |rule: Option<&str>, field: &str, message: String| MappingLoadError::Invalid {
                file: file.clone(),
                rule: rule.map(str::to_string),
                field: field.to_string(),
                message,
            };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = raw.source.clone().unwrap_or(stem);
        if source.is_empty()
            || !source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                None,
                "source",
                format!("{source:?} may hold only letters, digits, `-` and `_`"),
            ));
        }
        let verifier = raw
            .verify
            .build(env)
            .map_err(|e| invalid(None, "verify", e.to_string()))?;
        let (delivery_id, delivery_id_reads) = prune::collecting(|| {
            raw.delivery_id
                .as_ref()
                .map(|f| compile_field_ref(f).map_err(|m| invalid(None, "delivery_id", m)))
                .transpose()
        });
        let delivery_id = delivery_id?;
        let (event_type, mut mapping_reads) = prune::collecting(|| {
            raw.event_type
                .as_ref()
                .map(|f| compile_field_ref(f).map_err(|m| invalid(None, "event_type", m)))
                .transpose()
        });
        let event_type = event_type?;
        mapping_reads.extend(delivery_id_reads);
        let mut rule_reads = Vec::with_capacity(raw.rules.len());
        if raw.rules.is_empty() {
            return Err(invalid(
                None,
                "rules",
                "a mapping needs at least one rule".into(),
            ));
        }
        if raw.max_cases == Some(0) {
            return Err(invalid(None, "max_cases", "must be at least 1".into()));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for rule in &raw.rules {
            if rules.iter().any(|r: &CompiledRule| r.name == rule.name) {
                return Err(invalid(
                    Some(&rule.name),
                    "name",
                    "two rules share this name".into(),
                ));
            }
            let (compiled, reads) = prune::collecting(|| compile_rule(rule, env, &raw.maps));
            rules.push(compiled.map_err(
                |RuleError {
                     field,
                     message,
                     needle,
                 }| {
                    match needle.and_then(|n| locate(text, &rule.name, &n)) {
                        Some((line, column)) => MappingLoadError::Syntax {
                            file: file.clone(),
                            line,
                            column,
                            message: format!("rule `{}`: {field}: {message}", rule.name),
                        },
                        None => invalid(Some(&rule.name), &field, message),
                    }
                },
            )?);
            let for_each = rules
                .last()
                .and_then(|r| r.for_each.as_ref())
                .map(|p| p.as_str().to_string());
            rule_reads.push((reads, for_each));
        }
        let keep = prune::keep_for(&mapping_reads, &rule_reads);
        let digest = Sha256::digest(text.as_bytes());
        Ok(CompiledMapping {
            source,
            file: file.clone(),
            version: hex::encode(digest)[..12].to_string(),
            verifier,
            delivery_id,
            event_type,
            dedupe_ttl: raw.dedupe_ttl_secs.map(Duration::from_secs),
            max_cases: raw.max_cases.unwrap_or(DEFAULT_MAX_CASES),
            rules,
            examples: raw.examples,
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            keep,
        })
    }
}

pub(super) fn compile_field_ref(field: &FieldRef) -> Result<FieldGetter, String> {
    match (&field.header, &field.path) {
        (Some(header), None) if !header.trim().is_empty() => {
            Ok(FieldGetter::Header(header.trim().to_string()))
        }
        (None, Some(path)) => template::split_top_level(path, "??")
            .iter()
            .map(|alternative| CompiledPath::parse(alternative).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map(FieldGetter::Path),
        _ => Err("give exactly one of `header` or `path`".into()),
    }
}

/// Why a rule did not compile: the field, the message and, for template errors, the text to
/// look for in the file to say where.
pub(super) struct RuleError {
    field: String,
    message: String,
    needle: Option<String>,
}

pub(super) fn compile_rule(
    rule: &RuleSpec,
    env: &Env,
    maps: &ValueMaps,
) -> Result<CompiledRule, RuleError> {
    let at = |field: &str| {
        let field = field.to_string();
        move |message: String| RuleError {
            field: field.clone(),
            message,
            needle: None,
        }
    };
    let template_at = |field: &str| {
        let field = field.to_string();
        move |e: TemplateError| RuleError {
            field: field.clone(),
            message: e.to_string(),
            needle: e.needle().map(str::to_string),
        }
    };
    let queue = interpolate(&rule.queue, env)
        .map_err(|e| e.to_string())
        .map_err(at("queue"))?
        .value;
    if !is_uuid(&queue) {
        return Err(at("queue")(format!(
            "{queue:?} is not a queue id (a UUID such as 4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d)"
        )));
    }
    let (events, filter) = match &rule.when {
        Some(when) => (
            when.event.clone().map(|e| e.into_vec()).unwrap_or_default(),
            when.filter
                .as_ref()
                .map(|f| f.compile())
                .transpose()
                .map_err(|e| e.to_string())
                .map_err(at("when.filter"))?,
        ),
        None => (Vec::new(), None),
    };
    let for_each = rule
        .for_each
        .as_deref()
        .map(CompiledPath::parse)
        .transpose()
        .map_err(|e| e.to_string())
        .map_err(at("for_each"))?;
    let title = Template::parse_with(&rule.title, maps).map_err(template_at("title"))?;
    if title.is_literal() && rule.title.trim().is_empty() {
        return Err(at("title")("is empty (the API requires a title)".into()));
    }
    let data = DataTemplate::compile(
        rule.data.as_ref().unwrap_or(&Value::String("@".into())),
        maps,
    )
    .map_err(|(message, needle)| RuleError {
        field: "data".into(),
        message,
        needle,
    })?;
    let mut labels = Vec::with_capacity(rule.labels.len());
    for (i, label) in rule.labels.iter().enumerate() {
        if let Some(hue) = label.color_hue.filter(|h| *h > 360) {
            return Err(at(&format!("labels[{i}].color_hue"))(format!(
                "{hue} is outside 0-360"
            )));
        }
        let value = Template::parse_with(&label.value, maps)
            .map_err(template_at(&format!("labels[{i}].value")))?;
        labels.push(CompiledLabel {
            key: label.key.clone(),
            value,
            color_hue: label.color_hue,
        });
    }
    let include = rule.include.clone().unwrap_or_default();
    let api_key = rule
        .api_key
        .as_deref()
        .map(|k| interpolate(k, env).map(|i| i.value))
        .transpose()
        .map_err(|e| e.to_string())
        .map_err(at("api_key"))?;
    Ok(CompiledRule {
        name: rule.name.clone(),
        events,
        filter,
        queue: queue.to_ascii_lowercase(),
        api_key,
        for_each,
        title,
        data,
        include_headers: include.headers,
        include_meta: include.meta,
        labels,
    })
}

/// A key that appears twice in one YAML mapping: its second occurrence's 1-based line and
/// column, and a message. The YAML parser notices duplicates (for `data:` objects only when
/// asked for a generic value) but reports them where the enclosing mapping starts, so the
/// duplicate is looked up from there.
pub(super) fn duplicate_key(text: &str) -> Option<(usize, usize, String)> {
    let error = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).err()?;
    let message = error.to_string();
    let (context, key) = message.split_once("duplicate entry with key ")?;
    let key = key.split(" at line ").next().unwrap_or(key).trim();
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(key);
    let start = error.location()?;
    let context = context.trim_end_matches([' ', ':']);
    let message = if context.is_empty() {
        format!("duplicate key `{key}`")
    } else {
        format!("{context}: duplicate key `{key}`")
    };
    let (line, column) =
        second_key_occurrence(text, start.index(), key).unwrap_or((start.line(), start.column()));
    Some((
        line,
        column,
        format!("{message} (a key may appear only once in a mapping)"),
    ))
}

/// Where `key` appears for the second time as a key of the YAML mapping starting at byte
/// `start` (block or flow style), as a 1-based line and column.
pub(super) fn second_key_occurrence(text: &str, start: usize, key: &str) -> Option<(usize, usize)> {
    let is_key_at = |at: usize| {
        let rest = &text[at..];
        let rest = ["\"", "'"]
            .iter()
            .find_map(|q| {
                rest.strip_prefix(q)
                    .and_then(|r| r.strip_prefix(key))
                    .and_then(|r| r.strip_prefix(q))
            })
            .or_else(|| rest.strip_prefix(key));
        rest.is_some_and(|r| r.trim_start_matches([' ', '\t']).starts_with(':'))
    };
    let mut found = Vec::new();
    if text[start..].starts_with('{') {
        let (mut depth, mut quote, mut expect_key) = (0usize, None::<char>, false);
        for (i, c) in text[start..].char_indices() {
            let at = start + i;
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                '{' | '[' => {
                    depth += 1;
                    expect_key = depth == 1;
                }
                '}' | ']' => {
                    if depth == 1 {
                        break;
                    }
                    depth -= 1;
                }
                ',' if depth == 1 => expect_key = true,
                ' ' | '\t' | '\n' | '\r' => {}
                _ if expect_key => {
                    expect_key = false;
                    if is_key_at(at) {
                        found.push(at);
                    }
                    if c == '"' || c == '\'' {
                        quote = Some(c);
                    }
                }
                '"' | '\'' => quote = Some(c),
                _ => {}
            }
        }
    } else {
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let indent = text[line_start..start].chars().count();
        if is_key_at(start) {
            found.push(start);
        }
        let mut offset = text[start..].find('\n').map(|i| start + i + 1)?;
        for line in text[offset..].split_inclusive('\n') {
            let body = line.trim_start_matches(' ');
            let own_indent = line.len() - body.len();
            let blank = body.trim().is_empty() || body.starts_with('#');
            if !blank && own_indent < indent {
                break;
            }
            if !blank && own_indent == indent && is_key_at(offset + own_indent) {
                found.push(offset + own_indent);
            }
            offset += line.len();
        }
    }
    let at = *found.get(1)?;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    Some((
        text[..at].matches('\n').count() + 1,
        text[line_start..at].chars().count() + 1,
    ))
}

/// The 1-based line and column of `needle` in a mapping file's `text`, searched from the line
/// that names `rule` (the first occurrence after it), or from the start when that is not found.
pub(super) fn locate(text: &str, rule: &str, needle: &str) -> Option<(usize, usize)> {
    let rule_at = text
        .match_indices(rule)
        .map(|(at, _)| at)
        .find(|&at| {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            text[line_start..at].contains("name:")
        })
        .unwrap_or(0);
    let at = text[rule_at..]
        .find(needle)
        .map(|i| rule_at + i)
        .or_else(|| text.find(needle))?;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..at].matches('\n').count() + 1;
    let column = text[line_start..at].chars().count() + 1;
    Some((line, column))
}
