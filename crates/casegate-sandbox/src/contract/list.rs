//! The list endpoint's query: paging, order, and the status and search filters.

use super::ContractError;

/// Default and bounds of the list `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 20;
pub const MAX_LIST_LIMIT: usize = 100;
/// Largest list `offset` the API accepts (2^53 - 1).
pub const MAX_LIST_OFFSET: u64 = 9_007_199_254_740_991;
/// Case statuses the list `status` filter accepts.
pub const CASE_STATUSES: [&str; 6] = [
    "pending",
    "claimed",
    "completed",
    "failed",
    "needs_input",
    "postponed",
];

/// Sort direction of the list endpoint, by creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    Desc,
}

/// A valid list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: usize,
    pub offset: u64,
    pub order: SortOrder,
    /// `None` means every status.
    pub statuses: Option<Vec<String>>,
    /// Case-insensitive substring of the title or data.
    pub search: Option<String>,
}

/// Parses the list endpoint's query pairs. Unknown parameters are ignored, as the API does;
/// `created_at_from` and `updated_at_from` are refused because the sandbox does not filter by
/// date, and silently ignoring a filter would return wrong answers.
pub fn parse_list_query(pairs: &[(String, String)]) -> Result<ListQuery, ContractError> {
    let mut query = ListQuery {
        limit: DEFAULT_LIST_LIMIT,
        offset: 0,
        order: SortOrder::Desc,
        statuses: None,
        search: None,
    };
    let bad = |msg: String| ContractError::Query(msg);
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {value:?}"
                        ))
                    })?;
            }
            "offset" => {
                query.offset = value
                    .parse::<u64>()
                    .ok()
                    .filter(|o| *o <= MAX_LIST_OFFSET)
                    .ok_or_else(|| {
                        bad(format!(
                            "offset must be an integer from 0 to {MAX_LIST_OFFSET}, got {value:?}"
                        ))
                    })?;
            }
            "sort_order" => {
                query.order = match value.as_str() {
                    "asc" => SortOrder::Asc,
                    "desc" => SortOrder::Desc,
                    _ => {
                        return Err(bad(format!(
                            "sort_order must be asc or desc, got {value:?}"
                        )));
                    }
                };
            }
            "sort_by" => match value.as_str() {
                // Sandbox cases never change and are never postponed, so all three orders are
                // creation order.
                "created_at" | "updated_at" | "postponed_to" => {}
                _ => {
                    return Err(bad(format!(
                        "sort_by must be created_at, updated_at or postponed_to, got {value:?}"
                    )));
                }
            },
            "status" => {
                let statuses: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(unknown) = statuses
                    .iter()
                    .find(|s| !CASE_STATUSES.contains(&s.as_str()))
                {
                    return Err(bad(format!(
                        "status must be a comma-separated list of {}, got {unknown:?}",
                        CASE_STATUSES.join(", ")
                    )));
                }
                query.statuses = Some(statuses);
            }
            "search" => query.search = Some(value.clone()).filter(|s| !s.is_empty()),
            "created_at_from" | "updated_at_from" => {
                return Err(bad(format!("{name} is not supported by the sandbox")));
            }
            _ => {}
        }
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_have_documented_defaults_and_bounds() {
        let q = |pairs: &[(&str, &str)]| {
            let pairs: Vec<_> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            parse_list_query(&pairs)
        };
        let defaults = q(&[]).unwrap();
        assert_eq!(
            (defaults.limit, defaults.offset, defaults.order),
            (20, 0, SortOrder::Desc)
        );
        let set = q(&[
            ("limit", "100"),
            ("offset", "5"),
            ("sort_order", "asc"),
            ("sort_by", "updated_at"),
            ("status", "pending,failed"),
            ("search", "inv"),
            ("unknown", "ignored"),
        ])
        .unwrap();
        assert_eq!((set.limit, set.offset, set.order), (100, 5, SortOrder::Asc));
        assert_eq!(set.statuses.unwrap(), ["pending", "failed"]);
        assert_eq!(set.search.as_deref(), Some("inv"));
        for bad in [
            ("limit", "0"),
            ("limit", "101"),
            ("limit", "x"),
            ("offset", "-1"),
            ("offset", "9007199254740992"),
            ("sort_order", "up"),
            ("sort_by", "title"),
            ("status", "pending,done"),
            ("created_at_from", "2024-01-01T00:00:00Z"),
        ] {
            assert!(
                matches!(q(&[bad]), Err(ContractError::Query(_))),
                "{bad:?} should be refused"
            );
        }
    }
}
