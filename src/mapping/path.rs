//! JSONPath expressions as mapping files use them: compiled once at load, anchored at the payload
//! (`$...`) or at the current `for_each` element (`@...`).
//!
//! serde_json_path's parser recurses per nesting level and overflows the stack on absurd input
//! (thousands of parentheses), so length and nesting are bounded *before* parsing.

use serde_json::Value;
use serde_json_path::JsonPath;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Deepest accepted bracket/parenthesis nesting.
pub const MAX_PATH_NESTING: usize = 32;

/// What a path is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The whole payload (`$`).
    pub root: &'a Value,
    /// The current `for_each` element (`@`); the payload itself when the rule has no `for_each`.
    pub element: &'a Value,
}

impl<'a> Scope<'a> {
    pub fn of(root: &'a Value) -> Self {
        Scope {
            root,
            element: root,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    Root,
    Element,
}

/// A parsed, bounded JSONPath.
#[derive(Debug, Clone)]
pub struct CompiledPath {
    text: String,
    anchor: Anchor,
    path: JsonPath,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong { len: usize },
    #[error("path nests brackets more than {MAX_PATH_NESTING} deep")]
    TooDeep,
    #[error("a path starts with `$` (the payload) or `@` (the for_each element)")]
    NoAnchor,
    #[error("invalid JSONPath at character {position}: {message}")]
    Invalid { position: usize, message: String },
}

impl CompiledPath {
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let text = text.trim();
        if text.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong { len: text.len() });
        }
        if nesting_depth(text) > MAX_PATH_NESTING {
            return Err(PathError::TooDeep);
        }
        let (anchor, rooted) = match text.as_bytes().first() {
            Some(b'$') => (Anchor::Root, text.to_string()),
            Some(b'@') => (Anchor::Element, format!("${}", &text[1..])),
            _ => return Err(PathError::NoAnchor),
        };
        let path = JsonPath::parse(&rooted).map_err(|e| PathError::Invalid {
            position: e.position(),
            message: e.message().to_string(),
        })?;
        Ok(CompiledPath {
            text: text.to_string(),
            anchor,
            path,
        })
    }

    /// The path as written in the mapping file.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the path reads the `for_each` element rather than the payload.
    pub fn is_element_relative(&self) -> bool {
        self.anchor == Anchor::Element
    }

    pub fn select<'a>(&self, scope: Scope<'a>) -> Vec<&'a Value> {
        let target = match self.anchor {
            Anchor::Root => scope.root,
            Anchor::Element => scope.element,
        };
        self.path.query(target).all()
    }
}

/// Deepest nesting of `[`/`(` outside string literals.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max, mut quote, mut escaped) = (0usize, 0usize, None::<char>, false);
    for c in text.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '[' | '(' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn root_and_element_anchors_select_from_their_scope() {
        let root = json!({"name": "#1001", "items": [{"sku": "A"}, {"sku": "B"}]});
        let element = &root["items"][1];
        let scope = Scope {
            root: &root,
            element,
        };
        assert_eq!(
            CompiledPath::parse("$.name").unwrap().select(scope),
            vec![&json!("#1001")]
        );
        assert_eq!(
            CompiledPath::parse("@.sku").unwrap().select(scope),
            vec![&json!("B")]
        );
        assert_eq!(
            CompiledPath::parse("@").unwrap().select(scope),
            vec![element]
        );
        let skus = CompiledPath::parse("$.items[*].sku").unwrap().select(scope);
        assert_eq!(skus, vec![&json!("A"), &json!("B")]);
        assert!(
            CompiledPath::parse("$.missing")
                .unwrap()
                .select(scope)
                .is_empty()
        );
    }

    #[test]
    fn rfc9535_filters_work() {
        let root = json!({"items": [{"q": 1, "s": "a"}, {"q": 5, "s": "b"}]});
        let path = CompiledPath::parse("$.items[?@.q > 2 || @.s == 'a'].s").unwrap();
        assert_eq!(
            path.select(Scope::of(&root)),
            vec![&json!("a"), &json!("b")]
        );
    }

    #[test]
    fn bad_paths_are_refused_with_a_reason() {
        assert_eq!(
            CompiledPath::parse("name").unwrap_err(),
            PathError::NoAnchor
        );
        assert_eq!(CompiledPath::parse("").unwrap_err(), PathError::NoAnchor);
        assert!(matches!(
            CompiledPath::parse("$.a[").unwrap_err(),
            PathError::Invalid { .. }
        ));
        assert!(matches!(
            CompiledPath::parse("$[?length(@.a)]").unwrap_err(),
            PathError::Invalid { .. }
        ));
        let long = format!("$.{}", "a".repeat(MAX_PATH_LEN));
        assert!(matches!(
            CompiledPath::parse(&long).unwrap_err(),
            PathError::TooLong { .. }
        ));
    }

    #[test]
    fn absurd_nesting_is_refused_before_the_parser_sees_it() {
        let bomb = format!("$[?{}@.a{}]", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(
            CompiledPath::parse(&bomb).unwrap_err(),
            PathError::TooLong { len: bomb.len() }
        );
        let deep = format!("$[?{}@.a{}]", "(".repeat(40), ")".repeat(40));
        assert_eq!(CompiledPath::parse(&deep).unwrap_err(), PathError::TooDeep);
        let quoted = format!("$['{}']", "(".repeat(100));
        assert!(
            CompiledPath::parse(&quoted).is_ok(),
            "brackets inside strings do not count"
        );
    }
}
