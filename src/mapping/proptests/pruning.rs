//! The pruned parse (only what a mapping reads) maps every payload exactly as the full one.

use super::*;

/// Reads the payload in every way the pruning rule distinguishes: plain names and quoted names,
/// indexes and wildcards followed by names, filters below a name, `??` chains, a projection copying a subtree,
/// `@` paths with and without `for_each`, event type and delivery id from the payload.
const PRUNABLE: &str = r#"
verify: {scheme: none}
event_type: {path: '$.type ?? $.customer.type'}
delivery_id: {path: '$.id ?? $[''created'']'}
rules:
  - name: plain
    when:
      filter:
        all:
          - {path: $.status, ne: cancelled}
          - {path: '@.customer.email', exists: true}
    queue: QUEUE
    title: '{{ $.name ?? $.customer.name ?? "?" }} {{ $.items[0].sku ?? "" }} {{ $.tags[*] ?? "" }} {{ $.customer.items[*].sku ?? "" }} {{ $.status[0].qty ?? "" }} {{ $.total.*.name ?? "" }} {{ $.tags.customer.email ?? "" }}'
    data:
      customer: $.customer.email ?? null
      skus: '$.items[?@.qty > 1].sku ?? []'
      first: '$.items[0] ?? null'
      email: '@.email ?? null'
  - name: each
    for_each: $.items
    when: {filter: {path: '@.qty', gte: 1}}
    queue: QUEUE
    title: '{{ @.sku ?? "item" }} of {{ $.name ?? "?" }} {{ $.total ?? "" }}'
    data: {item: '@', names: '$.items[*].name ?? null'}
"#;

/// Every shipped mapping file, compiled.
fn shipped() -> Vec<CompiledMapping> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
        .iter()
        .map(|p| {
            CompiledMapping::compile(p, &std::fs::read_to_string(p).unwrap(), &Env::default())
                .unwrap()
        })
        .collect()
}

static PRUNE_MAPPINGS: std::sync::LazyLock<Vec<CompiledMapping>> = std::sync::LazyLock::new(|| {
    let mut all = vec![compile(RICH), compile(PER_ELEMENT), compile(PRUNABLE)];
    all.extend(shipped());
    all
});

/// What a mapping makes of one payload, everything a payload feeds: delivery id, event types,
/// cases or failure.
fn outcome(mapping: &CompiledMapping, payload: &Value) -> impl PartialEq + std::fmt::Debug {
    let headers: Headers = [("X-A", "1"), ("X-Shopify-Topic", "orders/create")]
        .into_iter()
        .collect();
    let delivery_id = mapping.delivery_id_of(payload, &headers);
    let input = EventInput {
        payload,
        headers: &headers,
        request_id: "r",
        delivery_id: delivery_id.as_deref(),
        received_at_ms: 1,
    };
    (
        delivery_id.clone(),
        mapping.event_types_of(payload, &headers),
        mapping.apply(&input),
    )
}

/// Payloads shaped like the shipped providers' (their keys), as well as the generic ones.
fn provider_payload() -> impl Strategy<Value = Value> {
    const PROVIDER_KEYS: &[&str] = &[
        "financial_status",
        "line_items",
        "customer",
        "email",
        "test",
        "name",
        "total_price",
        "data",
        "object",
        "type",
        "id",
        "event",
        "properties",
        "status",
        "current",
        "ticket",
        "requires_shipping",
        "quantity",
        "fulfillable_quantity",
        "subscriptionType",
        "meta",
    ];
    let value = json_value();
    proptest::collection::btree_map(proptest::sample::select(PROVIDER_KEYS), value, 0..14)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The payload ingest builds (only what the mapping reads) maps exactly as the full payload,
    /// for the rich test mappings and every shipped one.
    #[test]
    fn a_pruned_payload_maps_exactly_as_the_full_one(
        payload in prop_oneof![payload(), provider_payload()],
    ) {
        let text = payload.to_string();
        let full: Value = serde_json::from_str(&text).unwrap();
        for mapping in PRUNE_MAPPINGS.iter() {
            let pruned = prune::from_str(&text, &mapping.keep).unwrap();
            prop_assert_eq!(outcome(mapping, &full), outcome(mapping, &pruned), "{}", mapping.file);
        }
    }
}

#[test]
fn the_shipped_mappings_prune_and_the_test_mapping_reads_everything_it_needs() {
    // The Shopify orders are large and read in a few places: ingest builds a part of them.
    // (HubSpot's batch is an array under `for_each: $[*]` and is kept whole, rightly.)
    for mapping in shipped() {
        if mapping.file.starts_with("shopify") {
            assert!(!mapping.keep.is_all(), "{} keeps everything", mapping.file);
        }
    }
    let prunable = compile(PRUNABLE);
    let prune::Keep::Members { members, .. } = &prunable.keep else {
        panic!("PRUNABLE keeps everything")
    };
    let names: Vec<&str> = members.keys().collect();
    assert_eq!(
        names,
        [
            "created", "customer", "email", "id", "items", "name", "status", "tags", "total",
            "type"
        ]
    );
    let prune::Keep::Members {
        members: customer, ..
    } = &members["customer"]
    else {
        panic!("all of customer kept")
    };
    assert_eq!(
        customer.keys().collect::<Vec<_>>(),
        ["email", "items", "name", "type"]
    );
    // `$.items` (for_each) keeps the items whole, whatever `[*]` and `[0]` read.
    assert!(members["items"].is_all());
    // A filter comparing with the root keeps the whole document.
    let root =
        compile(&PRUNABLE.replace("'$.items[*].name ?? null'", "'$.items[?@.sku == $.name]'"));
    assert!(root.keep.is_all());
}

/// `include:` merged into each kind of data: an object whose members sort around the added
/// ones (and one of the same name, which they replace), a path selecting an object, a
/// template, an array and a literal.
const INCLUDES: &str = r#"
verify: {scheme: token, header: x-token, secrets: [t]}
rules:
  - name: around
    queue: QUEUE
    title: x
    data: {z: '$.name ?? null', a: '$.customer ?? null', _headers: kept?, _a: '$.items[*].sku ?? []', __: 1, _casegate: replaced, 'é': '{{ $.status ?? "" }}'}
    include: {headers: [X-A, X-Token, X-Missing], meta: true}
  - {name: selected, queue: QUEUE, title: x, data: '$.customer ?? null', include: {meta: true}}
  - {name: text, queue: QUEUE, title: x, data: '{{ $.name ?? "" }}', include: {headers: [X-A]}}
  - {name: listed, queue: QUEUE, title: x, data: ['$.total ?? null', 2], include: {meta: true}}
  - {name: literal, queue: QUEUE, title: x, data: 7}
  - {name: missing, queue: QUEUE, title: x, data: {b: {c: $.nowhere}}, include: {meta: true}}
  - {name: shadowed, queue: QUEUE, title: x, data: {a: 1, _headers: '$.nowhere'}, include: {headers: [X-A]}}
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The data written straight from the payload is, byte for byte (or error for error), what
    /// serializing the rendered value gives, for every rule of the test and shipped mappings.
    /// (Data that is not an object template but has members included takes the value path
    /// itself; for those rules this checks only that the path is chosen right.)
    #[test]
    fn data_written_in_place_is_the_rendered_value_serialized(
        payload in prop_oneof![payload(), provider_payload()],
    ) {
        let headers: Headers = [("X-A", "1\u{1}\""), ("X-Token", "t")].into_iter().collect();
        let input = EventInput {
            payload: &payload,
            headers: &headers,
            request_id: "r\"",
            delivery_id: Some("d"),
            received_at_ms: 1,
        };
        let includes = compile(INCLUDES);
        for mapping in PRUNE_MAPPINGS.iter().chain([&includes]) {
            for rule in &mapping.rules {
                for event_type in [None, Some("t")] {
                    let scope = Scope::of(&payload);
                    let written = mapping.case_data(rule, scope, &input, event_type);
                    let included = mapping.included(rule, &input, event_type);
                    let serialized = mapping
                        .data_value(rule, scope, included)
                        .map(|value| serde_json::to_string(&value).unwrap());
                    prop_assert_eq!(written, serialized, "{} {}", mapping.file, rule.name);
                }
            }
        }
    }
}
