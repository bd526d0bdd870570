//! Encoding records into stream entries and decoding Redis answers.

use redis::Value;

use super::*;

pub(super) fn encode(record: &impl serde::Serialize) -> Result<Vec<u8>, BufferError> {
    crate::buffer::encode_record(record).map_err(|e| BufferError::Corrupt {
        id: "(new record)".into(),
        reason: e.to_string(),
    })
}

/// `<ms>-<seq>`, the only form of stream id Redis accepts for an existing entry.
pub(super) fn is_stream_id(id: &str) -> bool {
    id.split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

pub(super) fn decode_dead_letter(entry: Value) -> Result<DeadLetter, BufferError> {
    let (id, json) = entry_parts(entry)?;
    let record = decode(&id, &json)?;
    Ok(DeadLetter { id, record })
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    id: &str,
    json: &[u8],
) -> Result<T, BufferError> {
    crate::buffer::decode_record(json).map_err(|reason| BufferError::Corrupt {
        id: id.to_owned(),
        reason,
    })
}

/// Decodes a claimed entry, or gives the dead letter for one that cannot be decoded. Only an
/// entry without an id (not a stream entry at all) is an error.
#[allow(clippy::type_complexity)]
pub(super) fn decode_entry_or_raw(
    queue: &str,
    entry: Value,
) -> Result<Result<(String, CaseRecord), (CaseId, DeadLetterRecord)>, BufferError> {
    let (id, fields) = split_entry(entry)?;
    let raw = match record_field(&id, fields) {
        Ok(json) => json,
        Err(e) => {
            let letter = DeadLetterRecord::undecodable(queue, &id, &[], &e.to_string());
            return Ok(Err((id, letter)));
        }
    };
    Ok(match crate::buffer::decode_record::<CaseRecord>(&raw) {
        Ok(record) => Ok((id, record)),
        Err(reason) => {
            let letter = DeadLetterRecord::undecodable(queue, &id, &raw, &reason);
            Err((id, letter))
        }
    })
}

pub(super) fn entry_parts(entry: Value) -> Result<(String, Vec<u8>), BufferError> {
    let (id, fields) = split_entry(entry)?;
    let json = record_field(&id, fields)?;
    Ok((id, json))
}

/// A stream entry's id and its field list.
fn split_entry(entry: Value) -> Result<(String, Value), BufferError> {
    let mut parts = into_array(entry).into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(as_string)
        .ok_or_else(|| unexpected("stream entry", "no id"))?;
    Ok((id, parts.next().unwrap_or(Value::Nil)))
}

/// The record JSON out of an entry's `[field, value, ...]` list.
pub(super) fn record_field(id: &str, fields: Value) -> Result<Vec<u8>, BufferError> {
    let corrupt = |reason: String| BufferError::Corrupt {
        id: id.to_owned(),
        reason,
    };
    let mut fields = into_array(fields).into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if as_string(&name).as_deref() == Some(FIELD) {
            return match value {
                Value::BulkString(bytes) => Ok(bytes),
                other => as_string(&other)
                    .map(String::into_bytes)
                    .ok_or_else(|| corrupt("record field is not a string".into())),
            };
        }
    }
    Err(corrupt(format!("entry has no field `{FIELD}`")))
}

pub(super) fn into_array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

pub(super) fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

pub(super) fn strings(value: Value, operation: &str) -> Result<Vec<String>, BufferError> {
    into_array(value)
        .iter()
        .map(|item| as_string(item).ok_or_else(|| unexpected(operation, "expected an id")))
        .collect()
}

pub(super) fn unexpected(operation: &str, reason: &str) -> BufferError {
    BufferError::Corrupt {
        id: format!("redis reply to {operation}"),
        reason: reason.to_owned(),
    }
}
