//! `casegate check`: compiles every mapping and runs its examples.

use super::*;

/// `casegate check`: compiles every mapping and runs its examples; prints every error, one per
/// line, and returns failure if there is any.
pub fn check(dir: &Path, env: &Env) -> ExitCode {
    check_within(dir, env, crate::mapping::DEFAULT_MAX_EVENT_CASES_BYTES)
}

/// [`check`], reporting `max_event_bytes` (`ingress.max_event_cases_bytes`) as each mapping's
/// bound on the size of one event's cases.
pub fn check_within(dir: &Path, env: &Env, max_event_bytes: usize) -> ExitCode {
    let set = match MappingSet::load_dir(dir, env) {
        Ok(set) => set,
        Err(errors) => {
            for error in &errors {
                eprintln!("error {error}");
            }
            eprintln!("{} error(s)", errors.len());
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for mapping in set.iter() {
        let results = run_examples(mapping, env, max_event_bytes);
        let failures: Vec<_> = results
            .iter()
            .filter_map(|r| r.failure.as_deref().map(|f| (&r.name, f)))
            .collect();
        if failures.is_empty() {
            out!(
                "ok    {} (source `{}`, version {}, {} rule(s), {} example(s) passed; limits: max_cases {}, max_event_cases_bytes {})",
                mapping.file,
                mapping.source,
                mapping.version,
                mapping.rule_names().count(),
                results.len(),
                mapping.max_cases,
                max_event_bytes
            );
        }
        for (name, failure) in failures {
            failed += 1;
            eprintln!("FAIL  {}: example `{name}`", mapping.file);
            for line in failure.lines() {
                eprintln!("      {line}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} example(s) failed");
        return ExitCode::FAILURE;
    }
    out!("{} mapping file(s) OK", set.len());
    ExitCode::SUCCESS
}
