use super::*;
use serde_json::json;

const QUEUE: &str = "4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d";

fn compile(yaml: &str) -> Result<CompiledMapping, MappingLoadError> {
    CompiledMapping::compile(
        Path::new("mappings/test-source.yaml"),
        yaml,
        &Env::from_pairs([("QUEUE", QUEUE)]),
    )
}

fn apply(
    mapping: &CompiledMapping,
    payload: &Value,
    headers: &Headers,
) -> Result<Vec<CaseRecord>, MapFailure> {
    mapping.apply(&EventInput {
        payload,
        headers,
        request_id: "req-1",
        delivery_id: Some("d-1"),
        received_at_ms: 42,
    })
}

fn header(name: &str, value: &str) -> Headers {
    [(name, value)].into_iter().collect()
}

#[test]
fn a_minimal_mapping_makes_one_case_with_the_whole_payload() {
    let mapping = compile(&format!("verify: {{scheme: none}}\nrules:\n  - name: all\n    queue: {QUEUE}\n    title: 'Order {{{{ $.name }}}}'\n")).unwrap();
    assert_eq!(mapping.source, "test-source");
    assert_eq!(mapping.version.len(), 12);
    let payload = json!({"name": "#1001", "total": 5});
    let cases = apply(&mapping, &payload, &Headers::new()).unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].title, "Order #1001");
    assert_eq!(
        serde_json::from_str::<Value>(&cases[0].data).unwrap(),
        payload
    );
    assert_eq!(cases[0].queue, QUEUE);
    assert_eq!(cases[0].meta.mapping_file, "test-source.yaml");
    assert_eq!(cases[0].meta.mapping_version, mapping.version);
    assert_eq!(cases[0].meta.rule, "all");
    assert_eq!(cases[0].meta.request_id, "req-1");
}

const SHOP: &str = r#"
verify: {scheme: none}
event_type: {header: X-Shopify-Topic}
delivery_id: {header: X-Shopify-Event-Id}
rules:
  - name: paid-orders
    when:
      event: orders/create
      filter: {all: [{path: $.financial_status, eq: paid}, {path: $.total_price, gt: 100}]}
    queue: ${QUEUE}
    title: 'Order {{ $.name }} from {{ $.customer.email ?? "unknown" | lower }}'
    data:
      order: $.name
      total: $.total_price
      email: '{{ $.customer.email ?? "none" }}'
      first_sku: $.line_items[0].sku
      constant: 7
    include: {headers: [X-Shopify-Topic], meta: true}
    labels:
      - {key: currency, value: '{{ $.currency }}', color_hue: 200}
      - {key: vip, value: '{{ $.customer.tags ?? "" }}'}
  - name: line-items
    when: {event: 'orders/*'}
    for_each: $.line_items
    queue: ${QUEUE}
    title: '{{ $.name }} / {{ @.sku }} x{{ @.quantity }}'
    data: {sku: '@.sku', order: $.name}
"#;

fn order(status: &str, total: &str) -> Value {
    json!({
        "name": "#1001", "financial_status": status, "total_price": total, "currency": "EUR",
        "customer": {"email": "Ann@Example.COM"},
        "line_items": [{"sku": "A-1", "quantity": 2}, {"sku": "B-2", "quantity": 1}]
    })
}

#[test]
fn rules_filter_project_fan_out_and_label() {
    let mapping = compile(SHOP).unwrap();
    let cases = apply(
        &mapping,
        &order("paid", "199.00"),
        &header("X-Shopify-Topic", "orders/create"),
    )
    .unwrap();
    let titles: Vec<_> = cases.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Order #1001 from ann@example.com",
            "#1001 / A-1 x2",
            "#1001 / B-2 x1"
        ]
    );
    let data: Value = serde_json::from_str(&cases[0].data).unwrap();
    assert_eq!(data["order"], "#1001");
    assert_eq!(data["total"], "199.00");
    assert_eq!(data["email"], "Ann@Example.COM");
    assert_eq!(data["first_sku"], "A-1");
    assert_eq!(data["constant"], 7);
    assert_eq!(
        data["_headers"],
        json!({"X-Shopify-Topic": "orders/create"})
    );
    assert_eq!(data["_casegate"]["source"], "test-source");
    assert_eq!(data["_casegate"]["event_type"], "orders/create");
    assert_eq!(data["_casegate"]["delivery_id"], "d-1");
    assert_eq!(
        cases[0].labels,
        vec![Label {
            key: "currency".into(),
            value: "EUR".into(),
            color_hue: Some(200)
        }]
    );
    let item: Value = serde_json::from_str(&cases[2].data).unwrap();
    assert_eq!(item, json!({"sku": "B-2", "order": "#1001"}));
    assert_eq!(cases[1].meta.rule, "line-items");
}

#[test]
fn events_that_match_no_rule_produce_no_cases() {
    let mapping = compile(SHOP).unwrap();
    let unpaid = apply(
        &mapping,
        &order("pending", "199.00"),
        &header("X-Shopify-Topic", "orders/create"),
    )
    .unwrap();
    assert_eq!(unpaid.len(), 2, "only the line-item rule matches");
    let other_topic = apply(
        &mapping,
        &order("paid", "199.00"),
        &header("X-Shopify-Topic", "products/update"),
    )
    .unwrap();
    assert!(other_topic.is_empty());
    let no_topic = apply(&mapping, &order("paid", "199.00"), &Headers::new()).unwrap();
    assert!(no_topic.is_empty());
}

#[test]
fn a_missing_required_path_fails_the_event_naming_rule_and_path() {
    let mapping = compile(SHOP).unwrap();
    let mut payload = order("paid", "150");
    payload.as_object_mut().unwrap().remove("name");
    let failure = apply(
        &mapping,
        &payload,
        &header("X-Shopify-Topic", "orders/create"),
    )
    .unwrap_err();
    assert_eq!(failure.rule, "paid-orders");
    assert!(failure.message.contains("$.name"), "{failure}");
}

#[test]
fn per_element_event_types_route_array_payloads() {
    let yaml = format!(
        r#"
verify: {{scheme: none}}
event_type: {{path: '@.subscriptionType'}}
rules:
  - name: contacts
    for_each: '$[*]'
    when: {{event: 'contact.*'}}
    queue: {QUEUE}
    title: 'Contact {{{{ @.objectId }}}} {{{{ @.subscriptionType }}}}'
  - name: deals
    for_each: '$[*]'
    when: {{event: deal.creation}}
    queue: {QUEUE}
    title: 'Deal {{{{ @.objectId }}}}'
"#
    );
    let mapping = compile(&yaml).unwrap();
    let payload = json!([
        {"objectId": 1, "subscriptionType": "contact.creation"},
        {"objectId": 2, "subscriptionType": "deal.creation"},
        {"objectId": 3, "subscriptionType": "contact.propertyChange"},
        {"objectId": 4, "subscriptionType": "company.creation"}
    ]);
    let cases = apply(&mapping, &payload, &Headers::new()).unwrap();
    let titles: Vec<_> = cases.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Contact 1 contact.creation",
            "Contact 3 contact.propertyChange",
            "Deal 2"
        ]
    );
    assert_eq!(cases[2].meta.event_type.as_deref(), Some("deal.creation"));
}

#[test]
fn event_type_and_delivery_id_paths_fall_back_with_double_question_marks() {
    // HubSpot's documentation still shows `eventType` where deliveries now carry
    // `subscriptionType`; a mapping reads either, preferring the first path that finds a value.
    let yaml = format!(
        r#"
verify: {{scheme: none}}
event_type: {{path: '@.subscriptionType ?? @.eventType'}}
delivery_id: {{path: '$[0].deliveryId ?? $[0].eventId'}}
rules:
  - name: contacts
    for_each: '$[*]'
    when: {{event: contact.creation}}
    queue: {QUEUE}
    title: 'Contact {{{{ @.objectId }}}}'
"#
    );
    let mapping = compile(&yaml).unwrap();
    let payload = json!([
        {"objectId": 1, "eventType": "contact.creation", "eventId": 7},
        {"objectId": 2, "subscriptionType": "contact.creation", "eventType": "ignored"},
        {"objectId": 3, "subscriptionType": null, "eventType": "contact.creation"},
        {"objectId": 4, "eventType": "contact.deletion"},
        {"objectId": 5}
    ]);
    let cases = apply(&mapping, &payload, &Headers::new()).unwrap();
    let titles: Vec<_> = cases.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles, ["Contact 1", "Contact 2", "Contact 3"]);
    assert_eq!(
        mapping.delivery_id_of(&payload, &Headers::new()).as_deref(),
        Some("7")
    );
    let bad = yaml.replace("@.subscriptionType ?? @.eventType", "@.subscriptionType ??");
    let err = compile(&bad).unwrap_err().to_string();
    assert!(err.contains("event_type"), "{err}");
}

#[test]
fn titles_are_cut_to_500_characters_and_empty_titles_fail() {
    let mapping = compile(&format!("verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: {QUEUE}\n    title: '{{{{ $.t }}}}'\n")).unwrap();
    let long = "é".repeat(800);
    let cases = apply(&mapping, &json!({"t": long}), &Headers::new()).unwrap();
    assert_eq!(cases[0].title.chars().count(), MAX_TITLE_CHARS);
    assert!(cases[0].title.ends_with('…'));
    let failure = apply(&mapping, &json!({"t": "   "}), &Headers::new()).unwrap_err();
    assert!(failure.message.contains("empty"), "{failure}");
}

#[test]
fn load_errors_name_file_rule_field_and_position() {
    let base = |rule: &str| {
        format!(
            "verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: {QUEUE}\n    title: t\n{rule}"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "verify: {scheme: none}\nrules: [\n".into(),
            "test-source.yaml:",
        ),
        (base("    colour: red\n"), "unknown field `colour`"),
        (base("    for_each: 'line_items'\n"), "rule `r`: for_each"),
        (
            base("    labels: [{key: k, value: v, color_hue: 400}]\n"),
            "labels[0].color_hue",
        ),
        (base("    when: {filter: {path: $.a}}\n"), "when.filter"),
        (
            base("    data: {x: '{{ $.a | shout }}'}\n"),
            "unknown filter",
        ),
        (
            "verify: {scheme: none}\nrules:\n  - {name: r, queue: not-a-uuid, title: t}\n".into(),
            "not a queue id",
        ),
        (
            "verify: {scheme: none}\nrules:\n  - {name: r, queue: '${NOPE}', title: t}\n".into(),
            "NOPE",
        ),
        (
            "verify: {scheme: none}\nrules: []\n".into(),
            "at least one rule",
        ),
        (
            format!(
                "verify: {{scheme: none}}\nrules:\n  - {{name: r, queue: {QUEUE}, title: ''}}\n"
            ),
            "title",
        ),
        (
            format!(
                "verify: {{scheme: none}}\nrules:\n  - {{name: r, queue: {QUEUE}, title: a}}\n  - {{name: r, queue: {QUEUE}, title: b}}\n"
            ),
            "share",
        ),
        (
            format!(
                "source: 'bad name'\nverify: {{scheme: none}}\nrules:\n  - {{name: r, queue: {QUEUE}, title: a}}\n"
            ),
            "source",
        ),
    ];
    for (yaml, fragment) in cases {
        let error = compile(&yaml).unwrap_err().to_string();
        assert!(
            error.contains(fragment),
            "expected {fragment:?} in {error:?}"
        );
        assert!(error.starts_with("test-source.yaml"), "{error}");
    }
    let syntax = compile("verify: {scheme: none}\nrules:\n  - name: r\n   queue: x\n").unwrap_err();
    assert!(
        matches!(
            syntax,
            MappingLoadError::Syntax {
                line: 3,
                column: 5,
                ..
            }
        ),
        "{syntax:?}"
    );
    assert!(
        syntax.to_string().starts_with("test-source.yaml:3:5: "),
        "{syntax}"
    );
}

#[test]
fn a_path_nesting_bomb_is_refused_at_load_not_at_runtime() {
    let bomb = format!("$[?{}@.a{}]", "(".repeat(10_000), ")".repeat(10_000));
    let yaml = format!(
        "verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: {QUEUE}\n    title: t\n    for_each: '{bomb}'\n"
    );
    let error = compile(&yaml).unwrap_err().to_string();
    assert!(
        error.contains("for_each") && error.contains("limit"),
        "{error}"
    );
}

#[test]
fn template_load_errors_say_file_line_and_column() {
    let cases = [
        (
            "    title: '{{ $.a | shout }}'\n",
            5,
            22,
            "unknown filter `shout`",
        ),
        (
            "    title: t\n    labels:\n      - {key: k, value: '{{ $.a | date(\"%Q\") }}'}\n",
            7,
            35,
            "unknown date format `%Q`",
        ),
        (
            "    title: t\n    data:\n      when: '$.a | replace(\"x\")'\n",
            7,
            20,
            "takes two arguments",
        ),
        (
            "    title: '{{ $.s | map(\"nope\") }}'\n",
            5,
            22,
            "no map named \"nope\"",
        ),
    ];
    for (rule_tail, line, column, fragment) in cases {
        let yaml = format!(
            "verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: {QUEUE}\n{rule_tail}"
        );
        let error = compile(&yaml).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(fragment), "{text}");
        assert!(
            text.starts_with(&format!("test-source.yaml:{line}:{column}: rule `r`: ")),
            "{text}"
        );
    }
}

#[test]
fn a_duplicated_key_is_reported_where_the_duplicate_is() {
    let cases = [
        (
            format!(
                "verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: {QUEUE}\n    title: t\n    # note\n    title: u\n"
            ),
            (7, 5),
            "rules[0]: duplicate key `title`",
        ),
        (
            format!(
                "verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: {QUEUE}\n    title: t\n    data: {{a: 1, b: {{a: 3}}, 'a': 2}}\n"
            ),
            (6, 29),
            "rules[0].data: duplicate key `a`",
        ),
        (
            format!(
                "verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: {QUEUE}\n    title: t\nverify: {{scheme: none}}\n"
            ),
            (6, 1),
            "duplicate key `verify`",
        ),
    ];
    for (yaml, (line, column), fragment) in cases {
        match compile(&yaml).unwrap_err() {
            MappingLoadError::Syntax {
                line: l,
                column: c,
                message,
                ..
            } => {
                assert_eq!((l, c), (line, column), "{message}");
                assert!(message.contains(fragment), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn no_match_names_the_absent_event_type_header() {
    let yaml = format!(
        "verify: {{scheme: none}}\nevent_type: {{header: X-Shopify-Topic}}\nrules:\n  - name: r\n    when: {{event: orders/create}}\n    queue: {QUEUE}\n    title: t\n"
    );
    let mapping = compile(&yaml).unwrap();
    let mut headers = Headers::new();
    let reason = mapping.no_match_reason(&headers);
    assert!(
        reason.contains("`X-Shopify-Topic` header, which the request lacks"),
        "{reason}"
    );
    headers.insert("x-shopify-topic", "orders/updated");
    let reason = mapping.no_match_reason(&headers);
    assert!(
        !reason.contains("lacks") && reason.starts_with("no rule matched"),
        "{reason}"
    );
}
