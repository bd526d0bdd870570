//! Inline examples: sample requests in a mapping file with the cases they must produce.
//! `casegate check` runs them like unit tests and prints a readable diff on mismatch.

use serde_json::Value;

use super::model::{ExampleSpec, ExpectedCase};
use super::{CompiledMapping, EventInput};
use crate::case::CaseRecord;
use crate::env::{Env, interpolate};
use crate::inbound::Headers;
use crate::inbound::InboundRequest;
use crate::verify::Verified;

/// The outcome of one example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleResult {
    pub name: String,
    /// `None` when the example passed; otherwise what differed, one line per difference.
    pub failure: Option<String>,
}

/// Runs every example of `mapping` as ingest would map it, with at most `max_event_bytes` of
/// cases per event (`ingress.max_event_cases_bytes`).
/// Expected queues may be written `${ENV}` like the rules' queues, resolved against `env`.
pub fn run_examples(
    mapping: &CompiledMapping,
    env: &Env,
    max_event_bytes: usize,
) -> Vec<ExampleResult> {
    mapping
        .examples
        .iter()
        .map(|example| ExampleResult {
            name: example.name.clone(),
            failure: run_one(mapping, example, env, max_event_bytes).err(),
        })
        .collect()
}

fn run_one(
    mapping: &CompiledMapping,
    example: &ExampleSpec,
    env: &Env,
    max_event_bytes: usize,
) -> Result<(), String> {
    let text = match (&example.payload, &example.payload_file) {
        (Some(payload), None) => payload.to_string(),
        (None, Some(file)) => {
            let path = mapping.dir.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("payload_file {}: {e}", path.display()))?
        }
        _ => return Err("give exactly one of `payload` or `payload_file`".into()),
    };
    let not_json = |e: serde_json::Error| match &example.payload_file {
        Some(file) => format!(
            "payload_file {}: not JSON: {e}",
            mapping.dir.join(file).display()
        ),
        None => format!("payload: not JSON: {e}"),
    };
    let payload: Value = serde_json::from_str(&text).map_err(not_json)?;
    // Ingest builds only what the mapping reads: the example runs on that pruned payload too,
    // and must give exactly what the full payload gives.
    let pruned = super::prune::from_str(&text, &mapping.keep).map_err(not_json)?;
    let headers: Headers = example
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    // The operator's own example: nothing to verify.
    let request = Verified::trusted_local_input(InboundRequest::local(headers, text.clone()));
    let headers = &request.get().headers;
    let run = |payload: &Value| {
        let delivery_id = mapping.delivery_id_of(payload, headers);
        let input = EventInput::new(&request, payload)
            .request_id("example")
            .delivery_id(delivery_id.as_deref());
        (
            delivery_id.clone(),
            mapping.apply_within(&input, max_event_bytes),
        )
    };
    let (full, partial) = (run(&payload), run(&pruned));
    if full != partial {
        return Err(format!(
            "the payload parsed for ingest (only what the mapping reads) maps differently from \
             the full payload:\n- {full:?}\n+ {partial:?}"
        ));
    }
    match (partial.1, &example.expect_error) {
        (Err(failure), Some(expected)) if failure.to_string().contains(expected.as_str()) => Ok(()),
        (Err(failure), Some(expected)) => Err(format!(
            "- error containing {expected:?}\n+ error {:?}",
            failure.to_string()
        )),
        (Err(failure), None) => Err(format!("mapping failed: {failure}")),
        (Ok(cases), Some(expected)) => Err(format!(
            "- error containing {expected:?}\n+ {} case(s)",
            cases.len()
        )),
        (Ok(cases), None) => compare(&example.expect, &cases, env),
    }
}

fn compare(expected: &[ExpectedCase], actual: &[CaseRecord], env: &Env) -> Result<(), String> {
    let mut diff = Vec::new();
    if expected.len() != actual.len() {
        diff.push(format!(
            "- {} case(s)\n+ {} case(s): {:?}",
            expected.len(),
            actual.len(),
            actual.iter().map(|c| &c.title).collect::<Vec<_>>()
        ));
    }
    for (i, (want, got)) in expected.iter().zip(actual).enumerate() {
        let mut field = |name: &str, want: String, got: String| {
            if want != got {
                diff.push(format!("case {i} {name}:\n- {want}\n+ {got}"));
            }
        };
        field("title", want.title.clone(), got.title.clone());
        if let Some(rule) = &want.rule {
            field("rule", rule.clone(), got.meta.rule.clone());
        }
        if let Some(queue) = &want.queue {
            let queue = interpolate(queue, env).map(|i| i.value.to_ascii_lowercase());
            field(
                "queue",
                queue.unwrap_or_else(|e| e.to_string()),
                got.queue.clone(),
            );
        }
        if let Some(labels) = &want.labels {
            field("labels", to_json(labels), to_json(&got.labels));
        }
        if let Some(data) = &want.data {
            let got_data: Value =
                serde_json::from_str(&got.data).unwrap_or(Value::String(got.data.clone()));
            diff.extend(json_diff(&format!("case {i} data"), data, &got_data));
        }
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(diff.join("\n"))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializable")
}

/// Differences between two JSON values, one entry per differing leaf path.
fn json_diff(at: &str, want: &Value, got: &Value) -> Vec<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let mut keys: Vec<&String> = w.keys().chain(g.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) => json_diff(&format!("{at}.{k}"), a, b),
                    (Some(a), None) => vec![format!("{at}.{k}:\n- {a}\n+ (absent)")],
                    (None, Some(b)) => vec![format!("{at}.{k}:\n- (absent)\n+ {b}")],
                    (None, None) => vec![],
                })
                .collect()
        }
        _ if want == got => vec![],
        _ => vec![format!("{at}:\n- {want}\n+ {got}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Env;
    use std::path::Path;

    fn mapping(examples: &str) -> CompiledMapping {
        let yaml = format!(
            "verify: {{scheme: none}}\nrules:\n  - name: r\n    queue: 4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d\n    title: 'T {{{{ $.n }}}}'\n    data: {{n: $.n}}\n    labels: [{{key: k, value: '{{{{ $.l ?? \"\" }}}}'}}]\n    when: {{filter: {{path: $.n, exists: true}}}}\n  - name: strict\n    when: {{filter: {{path: $.boom, exists: true}}}}\n    queue: 4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d\n    title: '{{{{ $.missing }}}}'\nexamples:\n{examples}"
        );
        CompiledMapping::compile(Path::new("m.yaml"), &yaml, &Env::default()).unwrap()
    }

    #[test]
    fn passing_examples_report_no_failure() {
        let results = run_examples(
            &mapping(
                "  - {name: one, payload: {n: 1, l: x}, expect: [{title: T 1, rule: r, data: {n: 1}, labels: [{key: k, value: x}]}]}\n  - {name: filtered, payload: {}, expect: []}\n  - {name: failing, payload: {boom: 1}, expect_error: '$.missing'}\n  - {name: queue, payload: {n: 2}, expect: [{title: T 2, queue: '${Q:-4f9c3c1e-5b0a-4c8e-9d51-2a7f0e6b1c3d}'}]}\n",
            ),
            &Env::default(),
            crate::mapping::DEFAULT_MAX_EVENT_CASES_BYTES,
        );
        assert_eq!(
            results.iter().filter(|r| r.failure.is_some()).count(),
            0,
            "{results:?}"
        );
        assert_eq!(results.len(), 4);
    }

    #[test]
    fn examples_run_under_the_given_bound_on_an_event_s_cases() {
        let example = mapping(
            "  - {name: one, payload: {n: 1}, expect: [{title: T 1, rule: r, data: {n: 1}}]}\n",
        );
        let within = |bytes| run_examples(&example, &Env::default(), bytes);
        assert_eq!(
            within(crate::mapping::DEFAULT_MAX_EVENT_CASES_BYTES)[0].failure,
            None
        );
        let failure = within(16)[0].failure.clone().unwrap();
        assert!(
            failure.contains("exceed 16 bytes (ingress.max_event_cases_bytes)"),
            "{failure}"
        );
    }

    #[test]
    fn mismatches_show_expected_and_actual() {
        let results = run_examples(
            &mapping(
                "  - {name: wrong, payload: {n: 1}, expect: [{title: T 2, data: {n: 2, extra: true}}]}\n  - {name: count, payload: {}, expect: [{title: x}]}\n  - {name: noerr, payload: {n: 1}, expect_error: boom}\n",
            ),
            &Env::default(),
            crate::mapping::DEFAULT_MAX_EVENT_CASES_BYTES,
        );
        let wrong = results[0].failure.as_deref().unwrap();
        assert!(wrong.contains("case 0 title:\n- T 2\n+ T 1"), "{wrong}");
        assert!(wrong.contains("case 0 data.n:\n- 2\n+ 1"), "{wrong}");
        assert!(wrong.contains("data.extra:\n- true\n+ (absent)"), "{wrong}");
        assert!(
            results[1]
                .failure
                .as_deref()
                .unwrap()
                .contains("- 1 case(s)\n+ 0 case(s)")
        );
        assert!(
            results[2]
                .failure
                .as_deref()
                .unwrap()
                .contains("error containing \"boom\"")
        );
    }
}
