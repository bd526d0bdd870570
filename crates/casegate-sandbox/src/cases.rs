//! The cases a queue holds, as the API shows them: storing an accepted request's cases (labels
//! keep one id per (key, value) within a queue) and the list endpoint's filtered, sorted pages.

use std::collections::HashMap;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::contract::{ListQuery, MAX_COLOR_HUE, NewCase, SortOrder};

/// A label on an accepted case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxLabel {
    /// The label's id; a (key, value) pair keeps its id within a queue.
    pub id: String,
    pub key: String,
    pub value: String,
    /// The hue given when the label was first created on the queue, or one derived from it.
    pub color_hue: u16,
}

/// An accepted case, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCase {
    pub id: String,
    pub queue_id: String,
    pub title: String,
    pub data: Option<String>,
    pub labels: Vec<SandboxLabel>,
    /// Always `pending`: nothing claims cases in the sandbox.
    pub status: String,
    /// ISO-8601 UTC with milliseconds.
    pub created_at: String,
    pub updated_at: String,
}

/// One page of the list endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseList {
    pub cases: Vec<SandboxCase>,
    pub total: usize,
    pub limit: usize,
    pub offset: u64,
}

/// One queue's cases, in acceptance order (which is creation order), and its labels.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) cases: Vec<SandboxCase>,
    labels: HashMap<(String, String), SandboxLabel>,
}

impl Queue {
    /// Stores valid cases accepted at `created_at`; returns them as the API shows them.
    pub(crate) fn add(
        &mut self,
        queue_id: &str,
        cases: Vec<NewCase>,
        created_at: &str,
    ) -> Vec<SandboxCase> {
        let added: Vec<SandboxCase> = cases
            .into_iter()
            .map(|case| {
                let mut labels: Vec<SandboxLabel> = Vec::new();
                for label in case.labels {
                    let stored = self
                        .labels
                        .entry((label.key.clone(), label.value.clone()))
                        .or_insert_with(|| SandboxLabel {
                            id: new_uuid(),
                            color_hue: label
                                .color_hue
                                .unwrap_or_else(|| derived_hue(&label.key, &label.value)),
                            key: label.key,
                            value: label.value,
                        });
                    if !labels.iter().any(|l| l.id == stored.id) {
                        labels.push(stored.clone());
                    }
                }
                SandboxCase {
                    id: new_uuid(),
                    queue_id: queue_id.to_owned(),
                    title: case.title,
                    data: case.data,
                    labels,
                    status: "pending".to_owned(),
                    created_at: created_at.to_owned(),
                    updated_at: created_at.to_owned(),
                }
            })
            .collect();
        self.cases.extend(added.iter().cloned());
        added
    }
}

/// One page of `cases` (a queue's, oldest first) as `query` asks for it.
pub(crate) fn page(cases: &[SandboxCase], query: &ListQuery) -> CaseList {
    let wanted_status = |c: &SandboxCase| {
        query
            .statuses
            .as_ref()
            .is_none_or(|s| s.contains(&c.status))
    };
    let search = query.search.as_ref().map(|s| s.to_lowercase());
    let matches_search = |c: &SandboxCase| {
        search.as_ref().is_none_or(|s| {
            c.title.to_lowercase().contains(s)
                || c.data
                    .as_ref()
                    .is_some_and(|d| d.to_lowercase().contains(s))
        })
    };
    let mut matching: Vec<&SandboxCase> = cases
        .iter()
        .filter(|c| wanted_status(c) && matches_search(c))
        .collect();
    if query.order == SortOrder::Desc {
        matching.reverse();
    }
    let total = matching.len();
    let skip = usize::try_from(query.offset).unwrap_or(usize::MAX);
    CaseList {
        cases: matching
            .into_iter()
            .skip(skip)
            .take(query.limit)
            .cloned()
            .collect(),
        total,
        limit: query.limit,
        offset: query.offset,
    }
}

/// A random version-4 UUID in lower-case hyphenated form.
fn new_uuid() -> String {
    let bits = rand::rng().random::<u128>();
    // Version 4 in bits 76..80, variant 0b10 in bits 62..64.
    let bits = (bits & !(0xf_u128 << 76)) | (0x4_u128 << 76);
    let bits = (bits & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A stable hue for a label created without one (FNV-1a of key and value).
fn derived_hue(key: &str, value: &str) -> u16 {
    let hash = key
        .bytes()
        .chain([0])
        .chain(value.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    u16::try_from(hash % (u64::from(MAX_COLOR_HUE) + 1)).unwrap_or(0)
}
