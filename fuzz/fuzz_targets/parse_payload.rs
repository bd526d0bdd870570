//! Body parsing: `parse_payload` never panics, agrees with serde_json on JSON bodies, reports
//! the right byte for invalid UTF-8, and every error it returns maps to a documented 400 code.
#![no_main]

use std::time::Duration;

use casegate::error::ApiError;
use casegate::ingest::{BodyFormat, IngestError, body_format, parse_payload};
use libfuzzer_sys::fuzz_target;

/// README.md's codes for a body that is not a JSON event.
const BODY_CODES: &[&str] = &[
    "malformed_json",
    "invalid_utf8",
    "json_too_deep",
    "missing_form_payload",
];

fuzz_target!(|data: &[u8]| {
    let _ = body_format(Some(&String::from_utf8_lossy(data)));
    for format in [BodyFormat::Json, BodyFormat::FormPayload] {
        match parse_payload(data, format) {
            Ok(value) => {
                if format == BodyFormat::Json {
                    let direct: serde_json::Value = serde_json::from_slice(data).unwrap();
                    assert_eq!(value, direct);
                }
            }
            Err(error) => {
                if let IngestError::InvalidUtf8(at) = &error {
                    assert_eq!(*at, std::str::from_utf8(data).unwrap_err().valid_up_to());
                }
                let answer = ApiError::from_ingest(error, Duration::from_secs(1));
                assert_eq!(answer.status.as_u16(), 400, "{answer}");
                assert!(
                    BODY_CODES.contains(&answer.code),
                    "undocumented code: {answer}"
                );
            }
        }
    }
});
