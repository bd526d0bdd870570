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
    let cases: [(&str, &str); 22] = [
        ("Order {{ $.name", "never closed"),
        ("{{ }}", "empty"),
        ("{{ name }}", "starts with `$`"),
        ("{{ $.a[ }}", "invalid JSONPath"),
        ("{{ $.a ?? unknown }}", "JSON literal"),
        ("{{ $.a | shout }}", "unknown filter `shout`"),
        ("{{ $.a ?? \"x\" ?? $.b }}", "must come last"),
        ("{{ $.a ?? $.b[ }}", "invalid JSONPath"),
        ("{{ $.a | date(\"%Q\") }}", "unknown date format `%Q`"),
        ("{{ $.a | date(\"%Y-%\") }}", "lone `%`"),
        ("{{ $.a | date }}", "takes one argument, the format"),
        ("{{ $.a | date(1) }}", "is not a string"),
        ("{{ $.a | join }}", "takes one argument, the separator"),
        ("{{ $.a | join(\", \", \"x\") }}", "got 2 argument(s)"),
        (
            "{{ $.a | join(\"0123456789abcdefg\") }}",
            "at most 16 bytes",
        ),
        ("{{ $.a | replace(\"a\") }}", "takes two arguments"),
        ("{{ $.a | replace(\"\", \"b\") }}", "may not be empty"),
        ("{{ $.a | truncate(-1) }}", "whole number"),
        ("{{ $.a | upper(1) }}", "takes no arguments"),
        ("{{ $.a | json() }}", "takes no arguments"),
        ("{{ $.a | default('x') }}", "JSON literals"),
        ("{{ $.a | map(\"status\") }}", "no map named \"status\""),
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

#[test]
fn fallback_chains_try_each_path_in_turn() {
    let payload = json!({
        "email": null, "customer": {"email": "c@example.com"}, "blank": "", "n": 0
    });
    let cases = [
        (
            "{{ $.email ?? $.customer.email ?? \"guest\" }}",
            "c@example.com",
        ),
        ("{{ $.nope ?? $.email ?? \"guest\" }}", "guest"),
        ("{{ $.nope ?? $.also_nope ?? 3 }}", "3"),
        ("{{ $.blank ?? $.customer.email }}", ""),
        ("{{ $.n ?? 5 }}", "0"),
        ("[{{ $.nope ?? $.email }}]", "[]"),
        ("{{ $.nope ?? @.customer.email | upper }}", "C@EXAMPLE.COM"),
    ];
    for (template, expected) in cases {
        assert_eq!(
            render(template, &payload).unwrap(),
            expected,
            "{template:?}"
        );
    }
    assert_eq!(
        render("{{ $.nope ?? $.other }}", &payload).unwrap_err(),
        RenderError::Missing("$.nope ?? $.other".into())
    );
    let expr = Expr::parse("$.nope ?? $.customer.email ?? null").unwrap();
    assert_eq!(
        expr.value(Scope::of(&payload)),
        Some(json!("c@example.com"))
    );
    let expr = Expr::parse("$.nope ?? $.email").unwrap();
    assert_eq!(expr.value(Scope::of(&payload)), Some(Value::Null));
    let expr = Expr::parse("$.nope ?? $.other").unwrap();
    assert_eq!(expr.value(Scope::of(&payload)), None);
}

#[test]
fn filters_table() {
    let payload = json!({
        "tags": ["a", "b", "c"], "one": ["x"], "items": [{"sku": "A"}, {"sku": "B"}],
        "obj": {"k": [1, "two"]}, "text": "hello \"world\"", "status": "pending",
        "code": 404, "rfc": "2024-05-14T10:42:17+02:00", "utc": "2024-05-14T08:42:17Z",
        "naive": "2017-03-22T16:28:02", "rfc2822": "Tue, 14 May 2024 08:42:17 +0000",
        "secs": 1715676137, "millis": 1715676137000_i64, "digits": "1715676137",
        "float": 1715676137.9, "not_a_date": "soon", "empty": "", "null": null,
        "dates": ["2024-01-02T00:00:00Z", 0]
    });
    let cases = [
        ("{{ $.tags[*] | join(\" / \") }}", "a / b / c"),
        ("{{ $.tags | join(\"+\") }}", "a+b+c"),
        ("{{ $.items[*].sku | join(\"\") }}", "AB"),
        ("{{ $.one[*] | join(\",\") }}", "x"),
        ("{{ $.text | join(\",\") }}", "hello \"world\""),
        ("{{ $.obj | json }}", "{\"k\":[1,\"two\"]}"),
        ("{{ $.text | json }}", "\"hello \\\"world\\\"\""),
        ("{{ $.tags[*] | json }}", "[\"a\",\"b\",\"c\"]"),
        ("{{ $.code | json }}", "404"),
        ("{{ $.null | json }}", "null"),
        ("[{{ $.missing | json | default(\"-\") }}]", "[-]"),
        (
            "{{ $.rfc | date(\"%Y-%m-%d %H:%M %z\") }}",
            "2024-05-14 10:42 +0200",
        ),
        (
            "{{ $.utc | date(\"%d %b %Y, %H:%M:%S\") }}",
            "14 May 2024, 08:42:17",
        ),
        ("{{ $.naive | date(\"%F %T\") }}", "2017-03-22 16:28:02"),
        ("{{ $.rfc2822 | date(\"%F\") }}", "2024-05-14"),
        ("{{ $.secs | date(\"%F %T\") }}", "2024-05-14 08:42:17"),
        ("{{ $.millis | date(\"%F %T\") }}", "2024-05-14 08:42:17"),
        ("{{ $.digits | date(\"%A %e %B\") }}", "Tuesday 14 May"),
        ("{{ $.float | date(\"%T\") }}", "08:42:17"),
        (
            "{{ $.secs | date(\"%I:%M %p, %a %j, [%y] %:z 100%%\") }}",
            "08:42 AM, Tue 135, [24] +00:00 100%",
        ),
        ("{{ $.not_a_date | date(\"%F\") }}", "soon"),
        ("{{ $.dates[*] | date(\"%F\") }}", "2024-01-02, 1970-01-01"),
        ("{{ $.empty | default(\"none\") }}", "none"),
        ("{{ $.null | default(\"none\") }}", "none"),
        ("{{ $.missing | default(\"none\") }}", "none"),
        ("{{ $.status | default(\"none\") }}", "pending"),
        ("{{ $.text | replace(\"\\\"\", \"'\") }}", "hello 'world'"),
        (
            "{{ $.status | replace(\"n\", \"N\") | upper | replace(\"PE\", \"pe\") }}",
            "peNDING",
        ),
        ("{{ $.missing ?? \"\" | default(\"-\") | upper }}", "-"),
        (
            "{{ $.tags[*] | join(\"|\") | replace(\"|\", \" or \") }}",
            "a or b or c",
        ),
    ];
    for (template, expected) in cases {
        assert_eq!(
            render(template, &payload).unwrap(),
            expected,
            "{template:?}"
        );
    }
}

#[test]
fn value_maps_turn_codes_into_labels_with_a_fallback() {
    let maps: ValueMaps = BTreeMap::from([(
        "payment".to_string(),
        BTreeMap::from([
            ("paid".to_string(), "Paid".to_string()),
            ("pending".to_string(), "Awaiting payment".to_string()),
            ("404".to_string(), "Not found".to_string()),
        ]),
    )]);
    let payload = json!({"a": "paid", "b": "pending", "c": "refunded", "code": 404});
    let cases = [
        ("{{ $.a | map(\"payment\") }}", "Paid"),
        (
            "{{ $.b | map(\"payment\", \"Other\") | upper }}",
            "AWAITING PAYMENT",
        ),
        ("{{ $.c | map(\"payment\") }}", "refunded"),
        ("{{ $.c | map(\"payment\", \"Other\") }}", "Other"),
        ("{{ $.code | map(\"payment\") }}", "Not found"),
        ("{{ $.missing ?? \"paid\" | map(\"payment\") }}", "Paid"),
    ];
    for (template, expected) in cases {
        let rendered = Template::parse_with(template, &maps)
            .unwrap()
            .render(Scope::of(&payload), Missing::Fail)
            .unwrap();
        assert_eq!(rendered, expected, "{template:?}");
    }
    let error = Template::parse_with("{{ $.a | map(\"statuses\") }}", &maps)
        .unwrap_err()
        .to_string();
    assert!(error.contains("defined: payment"), "{error}");
}

#[test]
fn replace_growth_is_bounded() {
    let payload = json!({"a": "a".repeat(100_000)});
    let big = "b".repeat(1025);
    let template = format!("{{{{ $.a | replace(\"a\", \"{big}\") }}}}");
    let out = render(&template, &payload).unwrap();
    assert!(out.len() <= 100_000 + MAX_REPLACE_GROWTH, "{}", out.len());
    assert!(out.starts_with(&big));
    assert!(out.ends_with('a'));
}

#[test]
fn strftime_subset_translates_and_escapes_brackets() {
    assert_eq!(strftime_to_description("[%Y]").unwrap(), "[[[year]]");
    assert!(strftime_to_description("%:q").unwrap_err().contains("%:q"));
    assert!(
        DateFormat::parse(&"%Y".repeat(40))
            .unwrap_err()
            .contains("limit")
    );
}
