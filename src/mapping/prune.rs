//! Parsing only what a mapping reads.
//!
//! A webhook body is often kilobytes of JSON of which a mapping reads a dozen fields; building
//! the whole `serde_json::Value` (a `String` per key and string, a map per object) and dropping
//! it again was a large share of the CPU per webhook. When a mapping compiles, every JSONPath it
//! parses (rules, filters, templates, each `??` alternative, `for_each`, `event_type`,
//! `delivery_id`) is noted, and the union becomes a [`Keep`] tree: object members no path can
//! reach are parsed but not built.
//!
//! Soundness rule (results must equal those of a full parse):
//! - a path is reduced to its leading run of plain member names (`.name`, `['name']`); from the
//!   node it reaches, the whole subtree is kept. Indexes, wildcards, slices, descendants (`..`)
//!   and filters therefore keep everything below the last plain name before them: a filter's
//!   `@` reads only inside the node it filters. A path that mentions `$` anywhere after its
//!   anchor (a filter comparing with the root) keeps the whole document.
//! - `@` paths of a rule with `for_each` read inside the elements, which are inside the subtree
//!   kept for the `for_each` path itself; every other `@` path (mapping level, rules without
//!   `for_each`) reads the payload, and counts as a `$` path.
//! - a node the tree wants to prune that is not an object (an array, a string...) is kept whole.
//!
//! Skipped members are still parsed by serde_json's own `deserialize_any`, so syntax, UTF-8,
//! number range and nesting-depth errors are the same errors at the same line and column as a
//! full parse; only nothing is allocated for them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Which parts of a payload a mapping can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The whole subtree.
    All,
    /// Parts of an object or array (any other value is kept whole).
    Members {
        /// Object members by name, each with what is kept of it. Every entry already includes
        /// `each`, so a member's tree is `members[name]`, else `each`.
        members: Members,
        /// What is kept of every array element and of every object member not named in
        /// `members` (`[*]`, `.*`, `[N]`); `None`: objects keep only `members`, arrays are
        /// kept whole.
        each: Option<Box<Keep>>,
    },
}

/// The kept members of an object, by name.
///
/// Most member names of a payload are not kept (a Shopify order has 76 top-level members, a
/// mapping reads about 20), and every one of them is looked up. A 64-bit mask of a cheap
/// signature of each kept name (its length, first and last byte) turns most of the others away
/// before the map is searched: the lookup was 4 % of the CPU per webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    names: BTreeMap<String, Keep>,
    signatures: u64,
}

impl Members {
    /// The kept member `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Keep> {
        if self.signatures & signature(name) == 0 {
            return None;
        }
        self.names.get(name)
    }

    /// The kept member `name`, added with `missing()` if it is not kept yet.
    fn get_or_insert_with(&mut self, name: &str, missing: impl FnOnce() -> Keep) -> &mut Keep {
        self.signatures |= signature(name);
        self.names.entry(name.to_string()).or_insert_with(missing)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Keep> {
        self.names.values_mut()
    }

    /// The kept names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }
}

impl std::ops::Index<&str> for Members {
    type Output = Keep;

    fn index(&self, name: &str) -> &Keep {
        self.get(name).expect("a kept member")
    }
}

/// One bit of 64 for a member name: equal names always share it.
fn signature(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let (first, last) = match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => (first as usize, last as usize),
        _ => (0, 0),
    };
    1 << ((bytes.len() * 31 + first + last * 7) % 64)
}

/// One step of a path's prefix that the keep tree follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Name(String),
    /// A wildcard or an index: every child (an index keeps its step in every element, a
    /// superset of what it reads).
    Each,
}

/// One path a mapping parsed, as written, and whether it is `@`-anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRead {
    pub text: String,
    pub element: bool,
}

thread_local! {
    /// Paths parsed on this thread while [`collecting`] runs. A thread-local rather than a walk
    /// over the compiled mapping: no path a future part of the language parses can be missed.
    static READS: RefCell<Option<Vec<PathRead>>> = const { RefCell::new(None) };
}

/// Called by every successful path parse.
pub(crate) fn note(text: &str, element: bool) {
    READS.with(|reads| {
        if let Some(reads) = reads.borrow_mut().as_mut() {
            reads.push(PathRead {
                text: text.to_string(),
                element,
            });
        }
    });
}

/// Runs `f`, returning the paths it parsed (on this thread). Nests: an inner call's paths are
/// returned by it, not by the outer one.
pub(crate) fn collecting<T>(f: impl FnOnce() -> T) -> (T, Vec<PathRead>) {
    let outer = READS.with(|reads| reads.borrow_mut().replace(Vec::new()));
    let result = f();
    let inner = READS.with(|reads| std::mem::replace(&mut *reads.borrow_mut(), outer));
    (result, inner.unwrap_or_default())
}

impl Keep {
    /// Keeps nothing (a mapping that reads no path).
    pub fn nothing() -> Keep {
        Keep::Members {
            members: Members::default(),
            each: None,
        }
    }

    /// Adds what a payload-anchored path (`$...`, or `@...` read against the payload) reads.
    pub fn add(&mut self, text: &str) {
        let text = text.trim();
        let rest = text.get(1..).unwrap_or("");
        if rest.contains('$') {
            *self = Keep::All;
            return;
        }
        self.insert(&plain_prefix(rest));
    }

    /// Keeps the subtree at the end of `segments`.
    fn insert(&mut self, segments: &[Segment]) {
        let Keep::Members { members, each } = self else {
            return;
        };
        match segments.split_first() {
            None => *self = Keep::All,
            Some((Segment::Name(name), rest)) => members
                .get_or_insert_with(name, || {
                    each.as_deref().cloned().unwrap_or_else(Keep::nothing)
                })
                .insert(rest),
            Some((Segment::Each, rest)) => {
                each.get_or_insert_with(|| Box::new(Keep::nothing()))
                    .insert(rest);
                for member in members.values_mut() {
                    member.insert(rest);
                }
            }
        }
    }

    /// True when nothing is pruned (a plain full parse does the same work).
    pub fn is_all(&self) -> bool {
        matches!(self, Keep::All)
    }
}

/// The leading segments of a path after its anchor that the keep tree follows: `.name` and
/// `['name']` (each ending where the next segment starts), `[*]`, `.*` and `[N]`; stops at
/// anything else (filters, slices, descendants, quoting it does not read), whose subtree is
/// then kept whole.
fn plain_prefix(mut rest: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    loop {
        let (segment, after) = if let Some(after) = rest.strip_prefix(".*") {
            (Segment::Each, after)
        } else if let Some(after) = rest.strip_prefix("[*]") {
            (Segment::Each, after)
        } else if let Some(after) = rest.strip_prefix('.') {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                break;
            }
            (Segment::Name(name.to_string()), &after[end..])
        } else if let Some(after) = rest.strip_prefix("['") {
            let Some(end) = after.find('\'') else { break };
            let name = &after[..end];
            match after[end..].strip_prefix("']") {
                Some(after) if !name.contains('\\') => (Segment::Name(name.to_string()), after),
                _ => break,
            }
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            match after[end..].strip_prefix(']') {
                Some(after) if end > 0 => (Segment::Each, after),
                _ => break,
            }
        } else {
            break;
        };
        // A segment must end at the next one (or the end): `.café` stops before `caf`.
        if !(after.is_empty() || after.starts_with(['.', '['])) {
            break;
        }
        segments.push(segment);
        rest = after;
    }
    segments
}

/// The keep tree of one mapping: `mapping_reads` are the paths outside rules, `rules` each
/// rule's paths with the text of its `for_each` path, if any.
pub fn keep_for(mapping_reads: &[PathRead], rules: &[(Vec<PathRead>, Option<String>)]) -> Keep {
    let mut keep = Keep::nothing();
    for read in mapping_reads {
        keep.add(&read.text);
    }
    for (reads, for_each) in rules {
        if let Some(for_each) = for_each {
            keep.add(for_each);
        }
        for read in reads {
            if !(read.element && for_each.is_some()) {
                keep.add(&read.text);
            }
        }
    }
    keep
}

/// Parses `text` as JSON, building only what `keep` keeps; errors are a full parse's errors.
pub fn from_str(text: &str, keep: &Keep) -> serde_json::Result<Value> {
    if keep.is_all() {
        return serde_json::from_str(text);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Pruned(keep).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Deserializes one value, pruned by its keep tree.
struct Pruned<'k>(&'k Keep);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::All => Value::deserialize(deserializer),
            Keep::Members { members, each } => {
                deserializer.deserialize_any(PrunedVisitor(members, each.as_deref()))
            }
        }
    }
}

struct PrunedVisitor<'k>(&'k Members, Option<&'k Keep>);

impl<'de> Visitor<'de> for PrunedVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // Everything but an object or array is kept whole, built exactly as serde_json's own Value
    // does.
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let each = self.1.unwrap_or(&Keep::All);
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Pruned(each))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(kept) = map.next_key_seed(KeyOf(self.0, self.1))? {
            match kept {
                Some((name, keep)) => {
                    let value = map.next_value_seed(Pruned(keep))?;
                    // A repeated member replaces the earlier one, as in a full parse.
                    object.insert(name, value);
                }
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(Value::Object(object))
    }
}

/// A member name: the kept member's name and keep tree, or `None` for a member to skip.
struct KeyOf<'k>(&'k Members, Option<&'k Keep>);

impl<'de, 'k> DeserializeSeed<'de> for KeyOf<'k> {
    type Value = Option<(String, &'k Keep)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'k> Visitor<'de> for KeyOf<'k> {
    type Value = Option<(String, &'k Keep)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .get(name)
            .or(self.1)
            .map(|keep| (name.to_string(), keep)))
    }
}

/// Parses one value completely (so it fails exactly where a full parse fails) and builds nothing.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keep(paths: &[&str]) -> Keep {
        let mut keep = Keep::nothing();
        for path in paths {
            keep.add(path);
        }
        keep
    }

    #[test]
    fn plain_names_prune_and_the_rest_keeps_subtrees() {
        let text = r#"{"a": {"b": 1, "c": [1, 2]}, "d": {"e": "x"}, "f": [{"g": 1}], "h": 5}"#;
        let value = from_str(text, &keep(&["$.a.b", "$.f[0].g", "$['h']"])).unwrap();
        assert_eq!(value, json!({"a": {"b": 1}, "f": [{"g": 1}], "h": 5}));
        // A name that does not end at a segment boundary stops the prefix before it.
        let a = Segment::Name("a".into());
        assert_eq!(plain_prefix(".a.café"), vec![a.clone()]);
        assert_eq!(plain_prefix("..a"), vec![]);
        assert_eq!(plain_prefix(".a[?@.b == 1]"), vec![a.clone()]);
        assert_eq!(plain_prefix(".a[1:2]"), vec![a.clone()]);
        assert_eq!(plain_prefix(".a[-1]"), vec![a.clone()]);
        assert_eq!(
            plain_prefix(".a[*].*[12]"),
            vec![a, Segment::Each, Segment::Each, Segment::Each]
        );
        assert!(keep(&["$..x"]).is_all());
        let full: Value = serde_json::from_str(text).unwrap();
        assert_eq!(from_str(text, &keep(&["$.*"])).unwrap(), full);
        assert!(keep(&["$"]).is_all());
        assert!(keep(&["$.a[?@.b == $.c]"]).is_all());
    }

    #[test]
    fn wildcards_and_indexes_keep_the_same_members_of_every_child() {
        let text =
            r#"{"items": [{"n": 1, "x": 2}, {"n": 3, "y": [4]}, 5], "m": {"p": {"n": 1, "z": 0}}}"#;
        let value = from_str(text, &keep(&["$.items[*].n", "$.m.*.n", "$.m.q"])).unwrap();
        assert_eq!(
            value,
            json!({"items": [{"n": 1}, {"n": 3}, 5], "m": {"p": {"n": 1}}})
        );
        // A name next to a wildcard keeps both what the name and what the wildcard reads.
        let value = from_str(text, &keep(&["$.m.p.z", "$.m[*].n"])).unwrap();
        assert_eq!(value, json!({"m": {"p": {"n": 1, "z": 0}}}));
        let value = from_str(text, &keep(&["$.m[*].n", "$.m.p.z"])).unwrap();
        assert_eq!(value, json!({"m": {"p": {"n": 1, "z": 0}}}));
        let value = from_str(text, &keep(&["$.items[1].y[0]"])).unwrap();
        assert_eq!(value, json!({"items": [{}, {"y": [4]}, 5]}));
    }

    #[test]
    fn a_name_sharing_a_kept_names_signature_is_still_skipped() {
        // Same length, first and last byte as `name`: past the signature mask, turned away by
        // the map itself.
        assert_eq!(signature("name"), signature("nane"));
        // The empty name has a signature too (`$['']` reads it).
        let text = r#"{"nane": 1, "name": 2, "": 3, "other": 4}"#;
        let value = from_str(text, &keep(&["$.name", "$['']"])).unwrap();
        assert_eq!(value, json!({"name": 2, "": 3}));
        let Keep::Members { members, .. } = keep(&["$.name", "$['']"]) else {
            panic!("members kept")
        };
        assert_eq!(members.keys().collect::<Vec<_>>(), ["", "name"]);
        assert!(members.get("nane").is_none());
    }

    #[test]
    fn a_pruned_node_that_is_not_an_object_is_kept_whole() {
        let value = from_str(r#"{"a": [1, {"b": 2}], "z": 0}"#, &keep(&["$.a.b"])).unwrap();
        assert_eq!(value, json!({"a": [1, {"b": 2}]}));
        let value = from_str(r#"{"a": "text", "z": 0}"#, &keep(&["$.a[*].b"])).unwrap();
        assert_eq!(value, json!({"a": "text"}));
        assert_eq!(from_str("[1]", &keep(&["$.a"])).unwrap(), json!([1]));
    }

    #[test]
    fn a_repeated_member_replaces_the_earlier_one() {
        let text = r#"{"a": {"b": 1, "x": 1}, "a": {"c": 2}}"#;
        let full: Value = serde_json::from_str(text).unwrap();
        assert_eq!(full, json!({"a": {"c": 2}}));
        assert_eq!(from_str(text, &keep(&["$.a.b", "$.a.c"])).unwrap(), full);
    }

    /// Skipped members fail exactly where a full parse fails, with the same message.
    #[test]
    fn skipped_members_keep_a_full_parses_errors() {
        let deep = format!(
            "{{\"skip\": {}{}, \"a\": 1}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let bad = [
            r#"{"skip": 1e400, "a": 1}"#.to_string(),
            r#"{"skip": "\x", "a": 1}"#.to_string(),
            r#"{"skip": {"k": tru}, "a": 1}"#.to_string(),
            "{\"skip\": \"\u{1}\", \"a\": 1}".to_string(),
            r#"{"skip": [1,], "a": 1}"#.to_string(),
            r#"{"a": 1} x"#.to_string(),
            deep,
        ];
        let keep = keep(&["$.a"]);
        for text in bad {
            let full = serde_json::from_str::<Value>(&text).unwrap_err();
            let pruned = from_str(&text, &keep).unwrap_err();
            assert_eq!(pruned.to_string(), full.to_string(), "{text}");
        }
    }
}
