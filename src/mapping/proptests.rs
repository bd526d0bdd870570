//! Property tests: no payload can make a mapping panic, titles stay within the API's limits, and
//! no text can make the compilers (paths, templates, conditions, whole files) panic.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::condition::ConditionSpec;
use super::path::{CompiledPath, Scope};
use super::template::{Expr, Missing, Template};
use super::*;

const QUEUE: &str = "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d";

/// Exercises templates (defaults, filters, several matches, the whole payload), filters (all,
/// any, not, every comparison), for_each (over arrays and non-arrays), per-element event types,
/// projections (paths, templates, nested objects and arrays, literals), include and labels.
const RICH: &str = r#"
verify: {scheme: none}
event_type: {path: '$.type'}
delivery_id: {path: '$.id'}
maps:
  status: {cancelled: Cancelled, '1': One, '': Empty}
rules:
  - name: orders
    when:
      event: ['order.*', created]
      filter:
        any:
          - {path: $.total, gt: 10}
          - {not: {path: '$.tags[*]', in: [a, b, 1, null]}}
          - all:
              - {path: $.name, exists: true}
              - {path: $.status, ne: cancelled}
              - {path: $.status, not_in: [x, 2.5]}
              - {path: $.total, lte: 1e300}
              - {path: $.total, lt: 5}
              - {path: $.total, gte: -3}
              - {path: $.name, eq: 'n'}
    queue: QUEUE
    title: '{{ $.name }} {{ $.total ?? 0 | truncate(20) }} {{ $.customer.email ?? $.email ?? @.email ?? "guest" | lower | trim }} {{ $.status ?? $.name | map("status", "?") | replace("C", "c") }} {{ $.created | date("%F %T %z") | default("-") }}'
    data:
      name: $.name ?? null
      whole: $
      skus: '{{ $.items[*].sku ?? "" | upper }}'
      nested: {first: '$.items[0] ?? null', everywhere: '$..sku ?? null', cut: '$.name ?? "" | truncate(3)'}
      list: ['$.total ?? 0', literal, 3, null, true]
      filtered: '$.items[?@.qty > 1 || @.sku == ''A''].sku ?? []'
      chained: '$.nothing ?? $.items[*].sku ?? $.name ?? null'
      joined: '{{ $.tags[*] | join("|") | default("none") }}'
      as_json: '{{ $.items | json | truncate(100) }}'
      when: '{{ $.total ?? $.created | date("%A %e %B %Y, %I:%M %p") }}'
    include: {headers: [X-A, Authorization], meta: true}
    labels:
      - {key: tags, value: '{{ $.tags[*] }}', color_hue: 10}
      - {key: name, value: '{{ $.name | truncate(5) | upper }}'}
      - {key: none, value: '{{ $.nothing }}'}
      - {key: mapped, value: '{{ $.status | map("status") | json }}'}
  - name: items
    for_each: $.items
    when: {filter: {path: '@.qty', gte: 1}}
    queue: QUEUE
    title: '{{ @.sku ?? "item" }} x{{ @.qty }} of {{ $.name ?? "?" }}'
    data: '@'
    labels: [{key: sku, value: '{{ @.sku ?? "" }}'}]
  - name: whole
    queue: QUEUE
    title: '{{ $ }}'
    data: {names: '{{ $..name ?? "" | truncate(3) }}', t: '$.type ?? null'}
"#;

/// The same language with per-element event types.
const PER_ELEMENT: &str = r#"
verify: {scheme: none}
event_type: {path: '@.type'}
rules:
  - name: each
    for_each: '$[*]'
    when: {event: 'a*'}
    queue: QUEUE
    title: 'x {{ @ ?? "" }}'
    data: {v: '@', root: '$[0] ?? null'}
"#;

fn compile(yaml: &str) -> CompiledMapping {
    CompiledMapping::compile(
        Path::new("mappings/prop.yaml"),
        &yaml.replace("QUEUE", QUEUE),
        &Env::default(),
    )
    .unwrap()
}

static MAPPINGS: std::sync::LazyLock<(CompiledMapping, CompiledMapping)> =
    std::sync::LazyLock::new(|| (compile(RICH), compile(PER_ELEMENT)));

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z0-9 .*/_-]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "\\PC{400,700}".prop_map(Value::from),
        prop_oneof![Just("order.created"), Just("created"), Just("a"), Just("")]
            .prop_map(Value::from),
    ]
}

const KEYS: &[&str] = &[
    "name", "total", "type", "items", "tags", "customer", "email", "status", "sku", "qty", "id",
    "0", "created",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// Arbitrary JSON, biased towards the keys the mappings read.
fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(8, 256, 10, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..10).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..10)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A payload nested as deep as serde_json parses (its recursion limit is 128), along a path the
/// mappings read, so `..` descends all the way. The bottom value nests up to 9 levels itself, so
/// the wrapping stops 10 short of the limit.
fn deep_value() -> impl Strategy<Value = Value> {
    (1usize..=118, json_value(), any::<bool>()).prop_map(|(depth, bottom, arrays)| {
        let open = if arrays { "[" } else { "{\"items\":" };
        let close = if arrays { "]" } else { "}" };
        let text = format!(
            "{}{}{}",
            open.repeat(depth - 1),
            bottom,
            close.repeat(depth - 1)
        );
        serde_json::from_str(&text).expect("within serde_json's nesting limit")
    })
}

fn payload() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => json_value(),
        1 => deep_value(),
        2 => (
            proptest::collection::btree_map(proptest::sample::select(KEYS), json_value(), 0..12),
            proptest::collection::vec(
                proptest::collection::btree_map(proptest::sample::select(&["sku", "qty"][..]), leaf(), 0..3),
                0..20,
            ),
        )
            .prop_map(|(fields, items)| {
                let mut object: Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                object.insert(
                    "items".into(),
                    Value::Array(
                        items
                            .into_iter()
                            .map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
                            .collect(),
                    ),
                );
                Value::Object(object)
            }),
    ]
}

fn check_cases(mapping: &CompiledMapping, payload: &Value) -> Result<(), TestCaseError> {
    let headers: Headers = [("X-A", "1"), ("Authorization", "secret")]
        .into_iter()
        .collect();
    let input = EventInput {
        payload,
        headers: &headers,
        request_id: "r",
        delivery_id: None,
        received_at_ms: 1,
    };
    if let Ok(cases) = mapping.apply(&input) {
        for case in cases {
            let chars = case.title.chars().count();
            prop_assert!(chars > 0, "empty title");
            prop_assert!(chars <= MAX_TITLE_CHARS, "title of {chars} characters");
            prop_assert!(
                !case.title.trim().is_empty(),
                "blank title {:?}",
                case.title
            );
            let data: Value = serde_json::from_str(&case.data).expect("data is JSON");
            prop_assert!(!data.to_string().contains("secret"), "credential copied");
            for label in &case.labels {
                prop_assert!(!label.value.trim().is_empty(), "empty label {}", label.key);
            }
        }
    }
    Ok(())
}

/// Text that looks like JSONPath, so the parser gets past its first character.
fn path_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[$@][$@.\\[\\]()?*'\"=<>!&|,:a-z0-9 \\\\-]{0,60}",
        "\\$[.\\[][a-z0-9*?@'\"()\\[\\]=<>!&| ,:.-]{0,40}",
        "\\$\\[\\?[a-z@.()'\"=<>!&| 0-9-]{0,40}\\]",
    ]
}

/// Text that looks like a template.
fn template_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just("{{".to_string()),
                Just("}}".to_string()),
                Just(" | ".to_string()),
                Just(" ?? ".to_string()),
                Just("truncate(".to_string()),
                Just("upper".to_string()),
                Just("json".to_string()),
                Just("join(\", \")".to_string()),
                Just("date(\"%Y-%m-%d %H:%M %:z\")".to_string()),
                Just("date(\"".to_string()),
                Just("default(\"x\")".to_string()),
                Just("replace(\"a\", \"bb\")".to_string()),
                Just("map(\"m\", \"?\")".to_string()),
                Just(" ?? $.a".to_string()),
                Just("%".to_string()),
                Just("||".to_string()),
                path_like(),
                "[a-z \"'()0-9]{0,8}",
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn condition_spec() -> impl Strategy<Value = ConditionSpec> {
    let test = (
        proptest::option::of(path_like()),
        proptest::option::of(leaf()),
        proptest::option::of(leaf()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(proptest::collection::vec(leaf(), 0..3)),
        proptest::option::of(any::<f64>()),
        proptest::option::of(any::<f64>()),
    )
        .prop_map(|(path, eq, ne, exists, in_list, gt, lte)| ConditionSpec {
            path,
            eq,
            ne,
            exists,
            in_list,
            gt,
            lte,
            ..ConditionSpec::default()
        });
    test.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|all| ConditionSpec {
                all: Some(all),
                ..ConditionSpec::default()
            }),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|any| ConditionSpec {
                any: Some(any),
                ..ConditionSpec::default()
            }),
            inner.prop_map(|not| ConditionSpec {
                not: Some(Box::new(not)),
                ..ConditionSpec::default()
            }),
        ]
    })
}

/// A valid file's text with random edits (deletions, insertions, swapped and duplicated lines).
fn mutated_file() -> impl Strategy<Value = String> {
    let edit = (
        0u8..5,
        any::<proptest::sample::Index>(),
        any::<proptest::sample::Index>(),
        prop_oneof![
            any::<String>(),
            "[-:{}\\[\\]'\"$@ ?|*&!#\n a-z0-9]{0,10}",
            Just("\n  ".to_string()),
            Just("${".to_string()),
            Just("{{".to_string()),
        ],
    );
    (
        prop_oneof![Just(RICH), Just(PER_ELEMENT)],
        proptest::collection::vec(edit, 1..8),
    )
        .prop_map(|(base, edits)| {
            let mut chars: Vec<char> = base.replace("QUEUE", QUEUE).chars().collect();
            for (kind, at, len, text) in edits {
                if chars.is_empty() {
                    chars.extend(text.chars());
                    continue;
                }
                let at = at.index(chars.len());
                match kind {
                    0 => {
                        let end = (at + len.index(20) + 1).min(chars.len());
                        chars.drain(at..end);
                    }
                    1 => {
                        chars.splice(at..at, text.chars());
                    }
                    2 => chars[at] = text.chars().next().unwrap_or(' '),
                    _ => {
                        let mut lines: Vec<String> = chars
                            .iter()
                            .collect::<String>()
                            .lines()
                            .map(str::to_string)
                            .collect();
                        let a = at % lines.len().max(1);
                        let b = len.index(lines.len().max(1));
                        if kind == 3 {
                            lines.swap(a, b);
                        } else {
                            let line = lines[a].clone();
                            lines.insert(b, line);
                        }
                        chars = lines.join("\n").chars().collect();
                    }
                }
            }
            chars.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_payload_makes_a_mapping_panic_and_titles_stay_within_limits(payload in payload()) {
        check_cases(&MAPPINGS.0, &payload)?;
        check_cases(&MAPPINGS.1, &payload)?;
    }

    #[test]
    fn the_path_compiler_never_panics(text in path_like(), payload in json_value()) {
        if let Ok(path) = CompiledPath::parse(&text) {
            let _ = path.select(Scope::of(&payload));
        }
    }

    #[test]
    fn the_template_compiler_never_panics(text in template_like(), payload in json_value()) {
        if let Ok(template) = Template::parse(&text) {
            let _ = template.render(Scope::of(&payload), Missing::Fail);
            let _ = template.render(Scope::of(&payload), Missing::Empty);
        }
        if let Ok(expr) = Expr::parse(&text) {
            let _ = expr.value(Scope::of(&payload));
        }
    }

    #[test]
    fn dates_of_any_value_render_without_panicking(
        n in any::<i64>(),
        f in any::<f64>(),
        text in prop_oneof![any::<String>(), "[0-9-]{1,25}", "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.Z+-]{0,20}"],
    ) {
        let template = Template::parse(r#"{{ $[*] | date("%Y-%m-%d %H:%M:%S %:z %j %A %B %e %I %p") }}"#).unwrap();
        let f = serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
        let payload = json!([n, f, text]);
        let rendered = template.render(Scope::of(&payload), Missing::Fail).unwrap();
        prop_assert!(!rendered.is_empty());
    }

    #[test]
    fn the_condition_compiler_never_panics(spec in condition_spec(), payload in json_value()) {
        if let Ok(condition) = spec.compile() {
            let _ = condition.eval(Scope::of(&payload));
        }
    }

    #[test]
    fn the_loader_never_panics_on_arbitrary_text(text in prop_oneof![
        any::<String>(),
        "[-:{}\\[\\]'\"$@ ?|*&!#\n a-z0-9]{0,200}",
    ]) {
        let _ = CompiledMapping::compile(Path::new("x.yaml"), &text, &Env::default());
    }

    #[test]
    fn the_loader_never_panics_on_a_mutated_file(text in mutated_file(), payload in json_value()) {
        if let Ok(mapping) = CompiledMapping::compile(Path::new("x.yaml"), &text, &Env::default()) {
            check_cases(&mapping, &payload)?;
        }
    }
}

/// Deep nesting hits serde_yaml_ng's recursion limit instead of the stack. (The YAML parser's
/// time grows quadratically with flow nesting — 20 000 `[` take seconds — so sizes stay small.)
#[test]
fn absurdly_nested_yaml_is_refused_without_a_crash() {
    for text in [
        "[".repeat(3_000),
        format!("verify: {{scheme: none}}\nrules: {}", "[".repeat(3_000)),
        format!("verify: {{scheme: none}}\nrules:\n{}", "- ".repeat(50_000)),
        format!(
            "verify: {{scheme: none}}\nrules:\n{}",
            (1..2_000)
                .map(|i| format!("{}a:\n", " ".repeat(i)))
                .collect::<String>()
        ),
    ] {
        assert!(CompiledMapping::compile(Path::new("x.yaml"), &text, &Env::default()).is_err());
    }
}

#[test]
fn the_rich_mapping_makes_cases_from_a_typical_payload() {
    // Guards the property test's mapping against silently matching nothing.
    let payload = json!({
        "name": "#1", "total": 50, "type": "order.created", "status": "open",
        "tags": ["x"], "customer": {"email": "A@B.C"},
        "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 0}]
    });
    let cases = compile(RICH)
        .apply(&EventInput {
            payload: &payload,
            headers: &Headers::new(),
            request_id: "r",
            delivery_id: None,
            received_at_ms: 1,
        })
        .unwrap();
    let rules: Vec<_> = cases.iter().map(|c| c.meta.rule.as_str()).collect();
    assert_eq!(rules, ["orders", "items", "whole"]);
    assert_eq!(cases[0].title, "#1 50 a@b.c ? -");
    let data: Value = serde_json::from_str(&cases[0].data).unwrap();
    assert_eq!(data["chained"], json!(["A", "B"]));
    assert_eq!(data["joined"], json!("x"));
    assert_eq!(data["when"], json!("Thursday  1 January 1970, 12:00 AM"));
}

mod pruning;
