//! Bounds on a document, checked before anything walks it. Every later walk (validation's depth and
//! complexity, the tenant gate, completion, the sharing key) follows fragment spreads, so a few
//! hundred bytes of fragments that each spread the next twice would cost them exponential time.
//! Here the text's tokens are counted before parsing, and the parsed document's aliases, directives
//! and fragment-expanded selections in one pass that visits each fragment once (memoized), so the
//! check itself is linear in the document's size; past a bound the request is refused with
//! BAD_USER_INPUT before any other walk.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// The bounds, from settings (graphql-armor's defaults were the starting point; the playground's
/// introspection query fits well within them).
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// A document's text, in bytes (whitespace, comments and strings cost parsing time too).
    pub max_bytes: usize,
    pub max_tokens: usize,
    pub max_aliases: usize,
    pub max_directives: usize,
    /// Selections (fields, spreads, inline fragments) once every fragment spread is expanded where
    /// it is spread.
    pub max_selections: usize,
}

impl DocumentLimits {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        DocumentLimits {
            max_bytes: s.max_document_bytes,
            max_tokens: s.max_tokens,
            max_aliases: s.max_aliases,
            max_directives: s.max_directives,
            max_selections: s.max_selections,
        }
    }

    /// Counts the text's lexical tokens (stopping past the bound): a refusal before parsing.
    pub fn check_text(&self, query: &str) -> Result<(), String> {
        if query.len() > self.max_bytes {
            return Err(format!(
                "the document is too large: more than {} bytes",
                self.max_bytes
            ));
        }
        let n = count_tokens(query, self.max_tokens);
        if n > self.max_tokens {
            return Err(format!(
                "the document is too large: more than {} tokens",
                self.max_tokens
            ));
        }
        Ok(())
    }

    /// Counts aliases and directives as written, and the selections fragments expand to.
    pub fn check_document(&self, doc: &ExecutableDocument) -> Result<(), String> {
        let mut written = Written::default();
        let mut expansion = Expansion {
            doc,
            memo: HashMap::new(),
            cap: self.max_selections as u64,
        };
        let mut total: u64 = 0;
        for (_, op) in doc.operations.iter() {
            written.directives += op.node.directives.len();
            for v in &op.node.variable_definitions {
                written.directives += v.node.directives.len();
            }
            written.count(&op.node.selection_set.node);
            total = total.saturating_add(expansion.size(&op.node.selection_set.node)?);
        }
        for (_, frag) in doc.fragments.iter() {
            written.directives += frag.node.directives.len();
            written.count(&frag.node.selection_set.node);
            // Checked even when unused: validation walks every fragment.
            total = total.saturating_add(expansion.size(&frag.node.selection_set.node)?);
        }
        if written.aliases > self.max_aliases {
            return Err(format!(
                "the document has {} aliases; at most {} are allowed",
                written.aliases, self.max_aliases
            ));
        }
        if written.directives > self.max_directives {
            return Err(format!(
                "the document has {} directives; at most {} are allowed",
                written.directives, self.max_directives
            ));
        }
        if total > self.max_selections as u64 {
            return Err(too_many_selections(self.max_selections));
        }
        Ok(())
    }
}

fn too_many_selections(max: usize) -> String {
    format!(
        "the document selects more than {max} fields and fragments once its fragments are expanded"
    )
}

/// Aliases and directives as written (each counted once, wherever it is spread).
#[derive(Default)]
struct Written {
    aliases: usize,
    directives: usize,
}

impl Written {
    fn count(&mut self, set: &SelectionSet) {
        // An explicit stack: a deeply nested document must not exhaust the thread's stack.
        let mut stack = vec![set];
        while let Some(set) = stack.pop() {
            for sel in &set.items {
                match &sel.node {
                    Selection::Field(f) => {
                        self.aliases += usize::from(f.node.alias.is_some());
                        self.directives += f.node.directives.len();
                        stack.push(&f.node.selection_set.node);
                    }
                    Selection::FragmentSpread(s) => self.directives += s.node.directives.len(),
                    Selection::InlineFragment(i) => {
                        self.directives += i.node.directives.len();
                        stack.push(&i.node.selection_set.node);
                    }
                }
            }
        }
    }
}

/// The number of fields a selection set expands to, each named fragment sized once.
struct Expansion<'a> {
    doc: &'a ExecutableDocument,
    /// A fragment's size, or None while it is being sized (a spread of it then is a cycle).
    memo: HashMap<&'a str, Option<u64>>,
    cap: u64,
}

impl<'a> Expansion<'a> {
    fn size(&mut self, set: &'a SelectionSet) -> Result<u64, String> {
        let mut total: u64 = 0;
        for sel in &set.items {
            // Every selection counts, spreads and inline fragments too: a walker visits them even
            // when they add no field (a spread of an unknown fragment).
            let n = match &sel.node {
                Selection::Field(f) => 1 + self.size(&f.node.selection_set.node)?,
                Selection::InlineFragment(i) => 1 + self.size(&i.node.selection_set.node)?,
                Selection::FragmentSpread(s) => {
                    1 + self.fragment(s.node.fragment_name.node.as_str())?
                }
            };
            total = total.saturating_add(n);
            if total > self.cap {
                return Err(too_many_selections(self.cap as usize));
            }
        }
        Ok(total)
    }

    fn fragment(&mut self, name: &'a str) -> Result<u64, String> {
        match self.memo.get(name) {
            Some(Some(n)) => return Ok(*n),
            Some(None) => {
                return Err(format!(
                    "fragment {} spreads itself",
                    crate::error::quote(name)
                ));
            }
            None => {}
        }
        // An unknown fragment adds nothing here; validation reports it.
        let Some((key, frag)) = self.doc.fragments.get_key_value(name) else {
            return Ok(0);
        };
        self.memo.insert(key.as_str(), None);
        let n = self.size(&frag.node.selection_set.node)?;
        self.memo.insert(key.as_str(), Some(n));
        Ok(n)
    }
}

/// GraphQL's lexical tokens in `src` (punctuators, names, numbers, strings; whitespace, commas and
/// comments are ignored), counting stops once past `stop_after`. Linear, and no parser involved.
pub fn count_tokens(src: &str, stop_after: usize) -> usize {
    let b = src.as_bytes();
    let (mut i, mut n) = (0usize, 0usize);
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() && n <= stop_after {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                n += 1;
                i += 3;
                while i < b.len() {
                    if b[i..].starts_with(b"\\\"\"\"") {
                        i += 4;
                    } else if b[i..].starts_with(b"\"\"\"") {
                        i += 3;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                n += 1;
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\n' | b'\r' => break,
                        _ => i += 1,
                    }
                }
            }
            b'.' if b[i..].starts_with(b"...") => {
                n += 1;
                i += 3;
            }
            // A number: an optional minus, digits, fraction and exponent.
            c if c.is_ascii_digit()
                || (c == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                n += 1;
                i += 1;
                while i < b.len()
                    && (word(b[i])
                        || b[i] == b'.'
                        || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
            }
            c if word(c) => {
                n += 1;
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
            }
            _ => {
                n += 1;
                i += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DocumentLimits = DocumentLimits {
        max_bytes: 65536,
        max_tokens: 2000,
        max_aliases: 30,
        max_directives: 50,
        max_selections: 1000,
    };

    /// The attacker's document: each fragment spreads the next twice.
    fn doubling(depth: usize) -> String {
        let mut q = String::from("{ ...F0 }");
        for i in 0..depth {
            q.push_str(&format!(
                " fragment F{i} on Query {{ ...F{} ...F{} }}",
                i + 1,
                i + 1
            ));
        }
        q.push_str(&format!(" fragment F{depth} on Query {{ __typename }}"));
        q
    }

    #[test]
    fn tokens_are_counted_as_the_lexer_sees_them() {
        assert_eq!(count_tokens("{ a }", 100), 3);
        assert_eq!(
            count_tokens("query Q($x: Int = -1.5e+3) { a(x: $x) }", 100),
            19
        );
        assert_eq!(
            count_tokens("{ a(s: \"x, y } \\\" z\") # comment { {\n }", 100),
            8
        );
        assert_eq!(count_tokens("{ ...F }", 100), 4);
        assert_eq!(count_tokens("{ a(s: \"\"\"block \"\" } \"\"\") }", 100), 8);
        // Counting stops past the bound: a huge text costs no more than the bound.
        assert_eq!(count_tokens(&"{ a }".repeat(1_000_000), 10), 11);
    }

    #[test]
    fn exponential_fragments_are_refused_in_linear_time() {
        for depth in [24, 30, 64] {
            let q = doubling(depth);
            let doc = async_graphql::parser::parse_query(&q).unwrap();
            let started = std::time::Instant::now();
            let err = LIMITS.check_document(&doc).unwrap_err();
            assert!(err.contains("more than 1000 fields"), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        // A chain that ends in a spread of an unknown fragment adds no field, yet walkers would
        // visit it 2^depth times: refused too.
        let q = doubling(40).replace(
            "fragment F40 on Query { __typename }",
            "fragment F40 on Query { ...Nowhere }",
        );
        let doc = async_graphql::parser::parse_query(&q).unwrap();
        assert!(LIMITS.check_document(&doc).is_err());
        // Small enough expansions pass.
        let q = doubling(5);
        let doc = async_graphql::parser::parse_query(&q).unwrap();
        assert!(LIMITS.check_document(&doc).is_ok());
    }

    #[test]
    fn cycles_aliases_and_directives_are_bounded() {
        let cyc = async_graphql::parser::parse_query(
            "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
        )
        .unwrap();
        assert!(
            LIMITS
                .check_document(&cyc)
                .unwrap_err()
                .contains("spreads itself")
        );
        let aliases: String = (0..31).map(|i| format!("a{i}: __typename ")).collect();
        let doc = async_graphql::parser::parse_query(format!("{{ {aliases} }}")).unwrap();
        assert!(
            LIMITS
                .check_document(&doc)
                .unwrap_err()
                .contains("31 aliases")
        );
        let dirs = "__typename @skip(if: false) ".repeat(51);
        let doc = async_graphql::parser::parse_query(format!("{{ {dirs} }}")).unwrap();
        assert!(
            LIMITS
                .check_document(&doc)
                .unwrap_err()
                .contains("51 directives")
        );
    }

    #[test]
    fn the_playground_introspection_fits() {
        let q = include_str!("../../tests/fixtures/introspection.graphql");
        assert!(
            LIMITS.check_text(q).is_ok(),
            "{} tokens",
            count_tokens(q, usize::MAX)
        );
        let doc = async_graphql::parser::parse_query(q).unwrap();
        LIMITS.check_document(&doc).unwrap();
    }
}
