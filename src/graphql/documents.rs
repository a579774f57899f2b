//! Parsed documents, kept by their text: clients send the same few documents over and over, and
//! parsing is the largest single cost of a small query (about an eighth of the server's time on the
//! usage summary). A request whose text was seen before gets a copy of its parsed document; the
//! executor still checks its depth, the tenant gate still sees it, and it is validated as always.
//! Only documents that parse are kept, at most `CAPACITY` of them (the map starts over when full) and
//! none longer than `MAX_LEN`, so a stream of distinct documents costs a bounded amount of memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::parser::types::ExecutableDocument;

use super::limits::DocumentLimits;

const CAPACITY: usize = 512;
const MAX_LEN: usize = 8 * 1024;

pub struct Documents {
    parsed: Mutex<HashMap<Arc<str>, Arc<ExecutableDocument>>>,
    limits: DocumentLimits,
}

impl Documents {
    pub fn new(limits: DocumentLimits) -> Self {
        Documents {
            parsed: Mutex::default(),
            limits,
        }
    }

    /// The parsed document of `query`: from the cache, or parsed now (and kept unless it is longer
    /// than `MAX_LEN`). None when it does not parse or exceeds the document limits (`limits`): the
    /// executor then reports the error as it always does, and nothing else walks it.
    pub fn parsed(&self, query: &str) -> Option<Arc<ExecutableDocument>> {
        if let Some(doc) = self.lock().get(query).cloned() {
            return Some(doc);
        }
        self.limits.check_text(query).ok()?;
        let doc = async_graphql::parser::parse_query(query).ok()?;
        self.limits.check_document(&doc).ok()?;
        let doc = Arc::new(doc);
        if query.len() <= MAX_LEN {
            let mut parsed = self.lock();
            if parsed.len() >= CAPACITY {
                parsed.clear();
            }
            parsed.insert(Arc::from(query), doc.clone());
        }
        Some(doc)
    }

    /// Gives the request its parsed document (see `parsed`).
    pub fn prepare(&self, request: &mut async_graphql::Request) {
        if let Some(doc) = self.parsed(&request.query) {
            request.set_parsed_query((*doc).clone());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<ExecutableDocument>>> {
        self.parsed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_parsed_once_and_bounded() {
        let docs = Documents::new(DocumentLimits {
            max_bytes: 1 << 20,
            max_tokens: 100_000,
            max_aliases: 100,
            max_directives: 100,
            max_selections: 100_000,
        });
        let mut a = async_graphql::Request::new("{ viewer { userId } }");
        docs.prepare(&mut a);
        assert!(a.parsed_query().is_ok());
        assert_eq!(docs.len(), 1);
        let mut again = async_graphql::Request::new("{ viewer { userId } }");
        docs.prepare(&mut again);
        assert_eq!(docs.len(), 1, "the same text is kept once");
        // A document that does not parse is not kept; the executor reports it.
        let mut broken = async_graphql::Request::new("{ viewer {");
        docs.prepare(&mut broken);
        assert_eq!(docs.len(), 1);
        assert!(broken.parsed_query().is_err());
        for i in 0..CAPACITY + 10 {
            docs.prepare(&mut async_graphql::Request::new(format!(
                "{{ a{i}: __typename }}"
            )));
        }
        assert!(docs.len() <= CAPACITY);
        let long = format!("{{ {} }}", "__typename ".repeat(MAX_LEN / 10));
        let before = docs.len();
        docs.prepare(&mut async_graphql::Request::new(long));
        assert_eq!(docs.len(), before, "long documents are not kept");
    }
}
