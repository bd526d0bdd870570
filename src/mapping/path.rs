//! JSONPath expressions as mapping files use them: compiled once at load, anchored at the payload
//! (`$...`) or at the current `for_each` element (`@...`).
//!
//! serde_json_path's parser recurses per nesting level and overflows the stack on absurd input
//! (thousands of parentheses), so length and nesting are bounded *before* parsing. Its time also
//! grows exponentially with nested filter expressions (`$[?@[?@[?@.x]]]`: about 2x per level,
//! hours at 32 levels), so filters and parentheses, the places it backtracks over, are bounded
//! more tightly: the worst path allowed compiles in well under a millisecond, and a reload of a
//! hostile file cannot hang.

use serde_json::Value;
use serde_json_path::JsonPath;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Deepest accepted bracket/parenthesis nesting.
pub const MAX_PATH_NESTING: usize = 32;
/// Deepest accepted nesting of filter selectors (`[?`) and parentheses (grouping and function
/// calls) together: the parser's time doubles with each such level.
pub const MAX_FILTER_NESTING: usize = 6;

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
    /// The same path as plain steps when it has only names and indexes (`$.a.b[0]['c d']`),
    /// the common case: it is then walked directly, without the general query machinery.
    steps: Option<Vec<Step>>,
}

/// One step of a path that selects at most one node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Name(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong { len: usize },
    #[error("path nests brackets more than {MAX_PATH_NESTING} deep")]
    TooDeep,
    #[error(
        "path nests filters (`[?`) and parentheses more than {MAX_FILTER_NESTING} deep; split it into simpler paths"
    )]
    FiltersTooDeep,
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
        let depth = nesting_depth(text);
        if depth.brackets > MAX_PATH_NESTING {
            return Err(PathError::TooDeep);
        }
        if depth.expressions > MAX_FILTER_NESTING {
            return Err(PathError::FiltersTooDeep);
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
            steps: simple_steps(&text[1..]),
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
        match &self.steps {
            Some(steps) => walk(target, steps).into_iter().collect(),
            None => self.path.query(target).all(),
        }
    }
}

/// The node a names-and-indexes path leads to, if any.
fn walk<'a>(mut node: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    for step in steps {
        node = match (step, node) {
            (Step::Name(name), Value::Object(object)) => object.get(name)?,
            (Step::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// `rest` (the path after its anchor) as steps, when it is only `.name`, `[N]` and `['name']`
/// segments in their plainest forms; `None` leaves the path to the general query. Only called
/// on paths the JSONPath parser accepted.
fn simple_steps(rest: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            steps.push(Step::Name(name.to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix("['") {
            let end = after.find('\'')?;
            let name = &after[..end];
            if name.contains('\\') {
                return None;
            }
            steps.push(Step::Name(name.to_string()));
            rest = after[end..].strip_prefix("']")?;
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let digits = &after[..end];
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || (digits.len() > 1 && digits.starts_with('0'))
            {
                return None;
            }
            steps.push(Step::Index(digits.parse().ok()?));
            rest = &after[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

/// Deepest nesting of `[`/`(` outside string literals.
/// The deepest nesting seen while scanning a path, outside string literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Depth {
    /// Brackets and parentheses of any kind.
    brackets: usize,
    /// Filter selectors (`[?`) and parentheses only: the levels the parser backtracks over.
    expressions: usize,
}

fn nesting_depth(text: &str) -> Depth {
    // One entry per open bracket: true when it opens an expression (filter or parenthesis).
    let mut open: Vec<bool> = Vec::new();
    let (mut expressions, mut max) = (0usize, Depth::default());
    let (mut quote, mut escaped) = (None::<char>, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
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
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                let expression = c == '(' || chars.peek() == Some(&'?');
                open.push(expression);
                expressions += usize::from(expression);
                max.brackets = max.brackets.max(open.len());
                max.expressions = max.expressions.max(expressions);
            }
            // The guard pops every closing bracket; only an expression's lowers the count.
            ']' | ')' if open.pop() == Some(true) => expressions -= 1,
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `$[?@[?@ ... .x]]` with `levels` nested filters, the shape whose parse time is
    /// exponential in its depth.
    fn nested_filters(levels: usize) -> String {
        format!("${}.x{}", "[?@".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn the_deepest_allowed_filter_nesting_compiles() {
        let started = std::time::Instant::now();
        let path = nested_filters(MAX_FILTER_NESTING);
        assert!(CompiledPath::parse(&path).is_ok(), "{path}");
        // Parentheses count as expression levels too.
        let parens = MAX_FILTER_NESTING - 3;
        let mixed = format!(
            "$[?@[?@[?{}@.x == 1{}]]]",
            "(".repeat(parens),
            ")".repeat(parens)
        );
        assert!(CompiledPath::parse(&mixed).is_ok(), "{mixed}");
        eprintln!("worst allowed paths compiled in {:?}", started.elapsed());
    }

    #[test]
    fn filter_nesting_beyond_the_bound_is_a_clear_load_error() {
        for path in [
            nested_filters(MAX_FILTER_NESTING + 1),
            nested_filters(32),
            format!(
                "$[?{}@.x == 1{}]",
                "(".repeat(MAX_FILTER_NESTING),
                ")".repeat(MAX_FILTER_NESTING)
            ),
        ] {
            let err = CompiledPath::parse(&path).unwrap_err();
            assert_eq!(err, PathError::FiltersTooDeep, "{path}");
            assert!(err.to_string().contains("filters"), "{err}");
        }
        // Brackets that are not filters and quoted `[?` do not count.
        assert!(CompiledPath::parse("$['[?[?[?[?[?[?[?'].a[0][1][2][3][4][5][6][7]").is_ok());
    }

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
    fn plain_paths_are_walked_directly_and_others_are_not() {
        let steps = |text: &str| CompiledPath::parse(text).unwrap().steps;
        assert_eq!(steps("$"), Some(vec![]));
        assert_eq!(
            steps("@.line_items[10]['a b'].sku_2"),
            Some(vec![
                Step::Name("line_items".into()),
                Step::Index(10),
                Step::Name("a b".into()),
                Step::Name("sku_2".into()),
            ])
        );
        for general in [
            "$.a[*]", "$..a", "$.a[-1]", "$[\"a\"]", "$.a[0:2]", "$.é", "$[?@.a]",
        ] {
            assert_eq!(steps(general), None, "{general}");
        }
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn walking_a_plain_path_selects_what_the_query_selects(
            text in "[$@]((\\.[a-c_][a-c0-9_]{0,2})|(\\[(0|[1-9][0-9]?|-1)\\])|(\\['[a-c .]{0,2}'\\])|(\\[\\*\\])){0,4}",
            payload in any::<u8>().prop_map(sample),
        ) {
            let path = CompiledPath::parse(&text).unwrap();
            let element = payload.get("b").unwrap_or(&payload);
            let scope = Scope { root: &payload, element };
            let target = if path.is_element_relative() { element } else { &payload };
            prop_assert_eq!(path.select(scope), path.path.query(target).all(), "{}", text);
        }
    }

    /// Small payloads with the names and indexes the generated paths use.
    fn sample(seed: u8) -> Value {
        let leaf = |n: u8| match n % 4 {
            0 => json!(null),
            1 => json!(n),
            2 => json!("s"),
            _ => json!([n, {"a": n}]),
        };
        json!({
            "a": [leaf(seed), {"b": leaf(seed / 2), "c": [leaf(seed / 3)]}, leaf(seed / 5)],
            "b": {"a": leaf(seed / 7), "c_1": [[leaf(seed)]], "a.": 1, " ": 2},
            "c": leaf(seed / 11),
            "": {"a": 3},
        })
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
