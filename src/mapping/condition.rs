//! `when.filter` conditions: tests on payload values combined with all/any/not.
//!
//! A test reads one path. `eq`/`ne`/`in` compare JSON values (numbers numerically); `gt`, `gte`,
//! `lt`, `lte` compare numbers and also numeric strings, because providers such as Shopify send
//! amounts as strings ("199.00"). A path that matches nothing fails every test but `ne`,
//! `exists: false` and `not_in`.

use serde::Deserialize;
use serde_json::Value;

use super::path::{CompiledPath, PathError, Scope};

/// A condition as written in a mapping file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// True when every listed condition is true.
    pub all: Option<Vec<ConditionSpec>>,
    /// True when at least one listed condition is true.
    pub any: Option<Vec<ConditionSpec>>,
    /// True when the condition is false.
    pub not: Option<Box<ConditionSpec>>,
    /// The JSONPath a test reads (`$` payload, `@` for_each element).
    pub path: Option<String>,
    /// True when a value at `path` equals this (numbers compare numerically).
    pub eq: Option<Value>,
    /// True when no value at `path` equals this.
    pub ne: Option<Value>,
    /// `true`: some non-null value is at `path`; `false`: none is.
    pub exists: Option<bool>,
    /// True when a value at `path` equals one of these.
    #[serde(rename = "in")]
    pub in_list: Option<Vec<Value>>,
    /// True when no value at `path` equals any of these.
    pub not_in: Option<Vec<Value>>,
    /// The first value at `path` (a number or numeric string) is greater than this.
    pub gt: Option<f64>,
    /// ... greater than or equal to this.
    pub gte: Option<f64>,
    /// ... less than this.
    pub lt: Option<f64>,
    /// ... less than or equal to this.
    pub lte: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Test { path: CompiledPath, op: Op },
}

#[derive(Debug, Clone)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    Exists(bool),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("a condition needs exactly one of all, any, not, or path with one test; found {0}")]
    Shape(String),
    #[error("path {path:?}: {source}")]
    Path { path: String, source: PathError },
}

impl ConditionSpec {
    pub fn compile(&self) -> Result<Condition, ConditionError> {
        let tests: Vec<(&str, Op)> = [
            self.eq.clone().map(|v| ("eq", Op::Eq(v))),
            self.ne.clone().map(|v| ("ne", Op::Ne(v))),
            self.exists.map(|v| ("exists", Op::Exists(v))),
            self.in_list.clone().map(|v| ("in", Op::In(v))),
            self.not_in.clone().map(|v| ("not_in", Op::NotIn(v))),
            self.gt.map(|v| ("gt", Op::Gt(v))),
            self.gte.map(|v| ("gte", Op::Gte(v))),
            self.lt.map(|v| ("lt", Op::Lt(v))),
            self.lte.map(|v| ("lte", Op::Lte(v))),
        ]
        .into_iter()
        .flatten()
        .collect();
        let combinators = [
            ("all", self.all.is_some()),
            ("any", self.any.is_some()),
            ("not", self.not.is_some()),
        ];
        let used: Vec<&str> = combinators
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .chain(self.path.as_ref().map(|_| "path"))
            .chain(tests.iter().map(|(name, _)| *name))
            .collect();
        let describe = || {
            if used.is_empty() {
                "nothing".to_string()
            } else {
                used.join(", ")
            }
        };
        match (&self.all, &self.any, &self.not, &self.path) {
            (Some(list), None, None, None) if tests.is_empty() => Ok(Condition::All(
                list.iter().map(Self::compile).collect::<Result<_, _>>()?,
            )),
            (None, Some(list), None, None) if tests.is_empty() => Ok(Condition::Any(
                list.iter().map(Self::compile).collect::<Result<_, _>>()?,
            )),
            (None, None, Some(inner), None) if tests.is_empty() => {
                Ok(Condition::Not(Box::new(inner.compile()?)))
            }
            (None, None, None, Some(path)) if tests.len() == 1 => {
                let compiled =
                    CompiledPath::parse(path).map_err(|source| ConditionError::Path {
                        path: path.clone(),
                        source,
                    })?;
                let (_, op) = tests.into_iter().next().expect("one test");
                Ok(Condition::Test { path: compiled, op })
            }
            _ => Err(ConditionError::Shape(describe())),
        }
    }
}

impl Condition {
    pub fn eval(&self, scope: Scope<'_>) -> bool {
        match self {
            Condition::All(list) => list.iter().all(|c| c.eval(scope)),
            Condition::Any(list) => list.iter().any(|c| c.eval(scope)),
            Condition::Not(inner) => !inner.eval(scope),
            Condition::Test { path, op } => {
                let nodes = path.select(scope);
                match op {
                    Op::Exists(expected) => nodes.iter().any(|v| !v.is_null()) == *expected,
                    Op::Eq(value) => nodes.iter().any(|v| json_eq(v, value)),
                    Op::Ne(value) => !nodes.iter().any(|v| json_eq(v, value)),
                    Op::In(list) => nodes
                        .iter()
                        .any(|v| list.iter().any(|item| json_eq(v, item))),
                    Op::NotIn(list) => !nodes
                        .iter()
                        .any(|v| list.iter().any(|item| json_eq(v, item))),
                    Op::Gt(n) => first_number(&nodes).is_some_and(|x| x > *n),
                    Op::Gte(n) => first_number(&nodes).is_some_and(|x| x >= *n),
                    Op::Lt(n) => first_number(&nodes).is_some_and(|x| x < *n),
                    Op::Lte(n) => first_number(&nodes).is_some_and(|x| x <= *n),
                }
            }
        }
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn first_number(nodes: &[&Value]) -> Option<f64> {
    match nodes.first()? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok().filter(|x: &f64| x.is_finite()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn condition(yaml: &str) -> Condition {
        serde_yaml_ng::from_str::<ConditionSpec>(yaml)
            .unwrap()
            .compile()
            .unwrap()
    }

    #[test]
    fn evaluation_table() {
        let order = json!({
            "financial_status": "paid", "total_price": "199.00", "count": 3,
            "tags": ["vip", "b2b"], "note": null, "currency": "EUR"
        });
        let cases = [
            ("{path: $.financial_status, eq: paid}", true),
            ("{path: $.financial_status, eq: pending}", false),
            ("{path: $.financial_status, ne: pending}", true),
            ("{path: $.missing, ne: x}", true),
            ("{path: $.count, eq: 3.0}", true),
            ("{path: $.total_price, gt: 100}", true),
            ("{path: $.total_price, gt: 199}", false),
            ("{path: $.total_price, gte: 199}", true),
            ("{path: $.total_price, lt: 199}", false),
            ("{path: $.count, lte: 3}", true),
            ("{path: $.currency, gt: 1}", false),
            ("{path: $.missing, gt: 1}", false),
            ("{path: $.note, exists: true}", false),
            ("{path: $.note, exists: false}", true),
            ("{path: $.count, exists: true}", true),
            ("{path: $.currency, in: [EUR, USD]}", true),
            ("{path: $.currency, not_in: [EUR, USD]}", false),
            ("{path: '$.tags[*]', eq: vip}", true),
            (
                "{all: [{path: $.financial_status, eq: paid}, {path: $.total_price, gt: 100}]}",
                true,
            ),
            (
                "{all: [{path: $.financial_status, eq: paid}, {path: $.total_price, gt: 500}]}",
                false,
            ),
            (
                "{any: [{path: $.currency, eq: USD}, {path: $.count, gt: 2}]}",
                true,
            ),
            ("{not: {path: $.currency, eq: USD}}", true),
            ("{all: []}", true),
            ("{any: []}", false),
        ];
        for (yaml, expected) in cases {
            assert_eq!(condition(yaml).eval(Scope::of(&order)), expected, "{yaml}");
        }
    }

    #[test]
    fn malformed_conditions_say_what_they_found() {
        let cases = [
            ("{path: $.a}", "found path"),
            ("{eq: 1}", "found eq"),
            ("{path: $.a, eq: 1, gt: 2}", "found path, eq, gt"),
            ("{all: [], path: $.a}", "found all, path"),
            ("{}", "found nothing"),
            ("{path: a, eq: 1}", "starts with `$`"),
        ];
        for (yaml, fragment) in cases {
            let error = serde_yaml_ng::from_str::<ConditionSpec>(yaml)
                .unwrap()
                .compile()
                .unwrap_err()
                .to_string();
            assert!(error.contains(fragment), "{yaml}: {error}");
        }
        let unknown = serde_yaml_ng::from_str::<ConditionSpec>("{path: $.a, equals: 1}")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("equals"), "{unknown}");
    }
}
