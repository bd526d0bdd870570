//! The template and JSONPath compilers: `Template::parse` and `CompiledPath::parse` never panic
//! (nor overflow the stack) on any text; what they accept renders/selects against any JSON
//! document without panicking; and a compiled path's fast walk selects exactly what the general
//! JSONPath query selects.
#![no_main]

use arbitrary::Arbitrary;
use casegate::mapping::path::{CompiledPath, Scope};
use casegate::mapping::template::{Missing, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    text: &'a str,
    doc: &'a str,
    fail_on_missing: bool,
}

fuzz_target!(|input: Input<'_>| {
    let doc: Value = serde_json::from_str(input.doc).unwrap_or_else(|_| {
        json!({"id": 1, "a": {"b": [1, {"c": "d"}], "e f": null}, "items": [{"sku": "A"}, {"sku": "B"}]})
    });
    let missing = if input.fail_on_missing {
        Missing::Fail
    } else {
        Missing::Empty
    };
    if let Ok(template) = Template::parse(input.text) {
        let _ = template.render(Scope::of(&doc), missing);
        for path in template.paths() {
            let _ = path.select(Scope::of(&doc));
        }
    }
    if let Ok(path) = CompiledPath::parse(input.text) {
        let selected = path.select(Scope::of(&doc));
        let text = path.as_str();
        let rooted = match text.strip_prefix('@') {
            Some(rest) => format!("${rest}"),
            None => text.to_string(),
        };
        let general = serde_json_path::JsonPath::parse(&rooted)
            .expect("CompiledPath accepted it, so the JSONPath parser does");
        let expected = general.query(&doc).all();
        assert_eq!(selected, expected, "path {text:?} on {doc}");
    }
});
