//! Completes an executed response as the GraphQL specification asks (Value Completion, Handling
//! Execution Errors), where the executor falls short:
//! - a field whose resolver failed is left out of its object instead of answering null;
//! - nothing propagates a null from a non-null position to its nearest nullable ancestor;
//! - an object's fields come back in the order their resolvers finished, not the order of the query.
//!
//! So after execution each object is walked with the selection that asked for it: a missing field
//! becomes null when its type allows it, and otherwise makes its parent null (or the parent's
//! parent, up to `data`); the fields are put in the order the query's CollectFields gives them.
//! Errors are left as they are: the failed field already reported one, at its own path.
//!
//! The walk needs each output field's declared type, read once from the schema's SDL
//! (`OutputTypes`). The schema has no unions or interfaces, so a fragment applies exactly when its
//! type condition names the object's own type. Introspection fields (`__schema`, `__type`,
//! `__typename`) are left as the executor answered them.

use std::collections::{HashMap, HashSet};

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{
    BaseType, ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet, Type,
    TypeKind, TypeSystemDefinition,
};
use async_graphql::{Name, Positioned, Response, Variables};
use async_graphql_value::{ConstValue, Value};

/// The declared type of every output field, and which named types have fields.
#[derive(Default)]
pub struct OutputTypes {
    fields: HashMap<String, HashMap<String, Type>>,
}

impl OutputTypes {
    /// Reads the object types of an SDL (`None` when it does not parse).
    pub fn from_sdl(sdl: &str) -> Option<Self> {
        let doc = async_graphql::parser::parse_schema(sdl).ok()?;
        let mut fields = HashMap::new();
        for def in doc.definitions {
            let TypeSystemDefinition::Type(t) = def else {
                continue;
            };
            let t = t.node;
            let own = match t.kind {
                TypeKind::Object(o) => o.fields,
                TypeKind::Interface(i) => i.fields,
                _ => continue,
            };
            let own = own
                .into_iter()
                .map(|f| (f.node.name.node.to_string(), f.node.ty.node))
                .collect();
            fields.insert(t.name.node.to_string(), own);
        }
        Some(OutputTypes { fields })
    }

    fn field(&self, parent: &str, name: &str) -> Option<&Type> {
        self.fields.get(parent)?.get(name)
    }

    /// The declared type of `parent`'s field `name`.
    pub fn field_type(&self, parent: &str, name: &str) -> Option<&Type> {
        self.field(parent, name)
    }

    /// Whether `named` is an object type (it has fields to select).
    pub fn has_fields(&self, named: &str) -> bool {
        self.fields.contains_key(named)
    }
}

/// Completes `resp` (the result of executing `operation_name` of `doc` with `variables`).
pub fn complete(
    types: &OutputTypes,
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
    resp: &mut Response,
) {
    let Some(op) = super::operation(doc, operation_name) else {
        return;
    };
    let op = &op.node;
    if matches!(resp.data, ConstValue::Null) {
        // Without an error at some path, execution never began (a request error): no data at all.
        if !resp.errors.iter().any(|e| !e.path.is_empty()) {
            return;
        }
        resp.data = ConstValue::Object(IndexMap::new());
    }
    let root = super::root_type(op.ty);
    let walk = Walk {
        types,
        fields: Collector { doc, variables, op },
    };
    let group = walk.fields.collect(root, [&op.selection_set.node]);
    let complete = match &mut resp.data {
        ConstValue::Object(map) => walk.object(root, &group, map),
        _ => true,
    };
    if !complete {
        resp.data = ConstValue::Null;
    }
}

/// Fields by response key, in the order CollectFields finds them.
type Group<'a> = IndexMap<Name, Vec<&'a Positioned<Field>>>;

/// The number of root fields an operation selects (CollectFields on its root type), for the
/// specification's "single root field" rule of subscriptions.
pub fn root_field_count(
    doc: &ExecutableDocument,
    op: &OperationDefinition,
    variables: &Variables,
) -> usize {
    Collector { doc, variables, op }
        .collect(super::root_type(op.ty), [&op.selection_set.node])
        .len()
}

struct Walk<'a> {
    types: &'a OutputTypes,
    fields: Collector<'a>,
}

/// CollectFields: an operation's selections for an object type, through fragments and directives.
struct Collector<'a> {
    doc: &'a ExecutableDocument,
    variables: &'a Variables,
    op: &'a OperationDefinition,
}

impl<'a> Walk<'a> {
    /// Completes an object of type `named` in place; false when it must be null instead.
    fn object(&self, named: &str, group: &Group<'a>, map: &mut IndexMap<Name, ConstValue>) -> bool {
        for (key, fields) in group {
            let name = fields[0].node.name.node.as_str();
            if name.starts_with("__") {
                continue;
            }
            let Some(ty) = self.types.field(named, name) else {
                continue;
            };
            let complete = match map.get_mut(key) {
                Some(value) => self.field(ty, fields, value),
                None => ty.nullable,
            };
            if !complete {
                return false;
            }
        }
        let in_order =
            map.len() == group.len() && map.keys().zip(group.keys()).all(|(a, b)| a == b);
        if !in_order {
            let mut ordered = IndexMap::with_capacity(group.len().max(map.len()));
            for key in group.keys() {
                let value = map.swap_remove(key).unwrap_or(ConstValue::Null);
                ordered.insert(key.clone(), value);
            }
            // Anything the selection did not account for is kept, after it.
            ordered.extend(map.drain(..));
            *map = ordered;
        }
        true
    }

    /// Completes one field's value in place; false when the field's null must propagate.
    fn field(&self, ty: &Type, fields: &[&'a Positioned<Field>], value: &mut ConstValue) -> bool {
        let named = innermost(ty);
        let group = self.types.has_fields(named).then(|| {
            self.fields
                .collect(named, fields.iter().map(|f| &f.node.selection_set.node))
        });
        self.value(ty, named, group.as_ref(), value)
    }

    fn value(
        &self,
        ty: &Type,
        named: &str,
        group: Option<&Group<'a>>,
        value: &mut ConstValue,
    ) -> bool {
        if matches!(value, ConstValue::Null) {
            return ty.nullable;
        }
        let complete = match (&ty.base, &mut *value) {
            (BaseType::List(inner), ConstValue::List(items)) => items
                .iter_mut()
                .all(|item| self.value(inner.as_ref(), named, group, item)),
            (BaseType::Named(_), ConstValue::Object(map)) => {
                group.is_none_or(|g| self.object(named, g, map))
            }
            _ => true,
        };
        if complete {
            return true;
        }
        *value = ConstValue::Null;
        ty.nullable
    }
}

impl<'a> Collector<'a> {
    /// CollectFields for an object of type `named`: fields in order of first appearance, merged by
    /// response key, through the fragments that apply, without the skipped ones.
    fn collect(&self, named: &str, sets: impl IntoIterator<Item = &'a SelectionSet>) -> Group<'a> {
        let mut group = Group::new();
        let mut visited = HashSet::new();
        for set in sets {
            self.collect_into(named, set, &mut group, &mut visited);
        }
        group
    }

    fn collect_into(
        &self,
        named: &str,
        set: &'a SelectionSet,
        group: &mut Group<'a>,
        visited: &mut HashSet<&'a str>,
    ) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(f) => {
                    if self.included(&f.node.directives) {
                        group
                            .entry(f.node.response_key().node.clone())
                            .or_default()
                            .push(f);
                    }
                }
                Selection::InlineFragment(inline) => {
                    let applies = inline
                        .node
                        .type_condition
                        .as_ref()
                        .is_none_or(|c| c.node.on.node.as_str() == named);
                    if applies && self.included(&inline.node.directives) {
                        self.collect_into(named, &inline.node.selection_set.node, group, visited);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if !self.included(&spread.node.directives) || !visited.insert(name) {
                        continue;
                    }
                    if let Some(fragment) = self.doc.fragments.get(&spread.node.fragment_name.node)
                        && fragment.node.type_condition.node.on.node.as_str() == named
                    {
                        self.collect_into(named, &fragment.node.selection_set.node, group, visited);
                    }
                }
            }
        }
    }

    /// Whether `@skip` and `@include` leave a selection in.
    fn included(&self, directives: &[Positioned<async_graphql::parser::types::Directive>]) -> bool {
        directives.iter().all(|d| {
            let condition = self.condition(d.node.get_argument("if").map(|v| &v.node));
            match d.node.name.node.as_str() {
                "skip" => condition != Some(true),
                "include" => condition != Some(false),
                _ => true,
            }
        })
    }

    /// The value of a directive's `if`, from a literal or a variable (or its default).
    fn condition(&self, value: Option<&Value>) -> Option<bool> {
        match value? {
            Value::Boolean(b) => Some(*b),
            Value::Variable(var) => match self.variables.get(var) {
                Some(ConstValue::Boolean(b)) => Some(*b),
                Some(_) => None,
                None => self
                    .op
                    .variable_definitions
                    .iter()
                    .find(|v| v.node.name.node == *var)
                    .and_then(|v| v.node.default_value.as_ref())
                    .and_then(|d| match &d.node {
                        ConstValue::Boolean(b) => Some(*b),
                        _ => None,
                    }),
            },
            _ => None,
        }
    }
}

fn innermost(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(n) => n.as_str(),
        BaseType::List(inner) => innermost(inner),
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::{PathSegment, ServerError};
    use serde_json::json;

    use super::*;

    const SDL: &str = "type Query { a: A b: String! list: [A!] must: A! } \
                       type A { x: Int! y: String z: A }";

    /// Completes `data` (with one error at `error_at`, if given) for `query`; the result as text, so
    /// that the order of the keys shows.
    fn completed(query: &str, data: serde_json::Value, error_at: Option<&[&str]>) -> String {
        let types = OutputTypes::from_sdl(SDL).expect("sdl");
        let doc = async_graphql::parser::parse_query(query).expect("query");
        let mut resp = Response::new(ConstValue::from_json(data).expect("data"));
        if let Some(path) = error_at {
            let mut e = ServerError::new("boom", None);
            e.path = path
                .iter()
                .map(|p| match p.parse::<usize>() {
                    Ok(i) => PathSegment::Index(i),
                    Err(_) => PathSegment::Field(p.to_string()),
                })
                .collect();
            resp.errors.push(e);
        }
        let variables = Variables::from_json(json!({ "no": false }));
        complete(&types, &doc, None, &variables, &mut resp);
        serde_json::to_string(&resp.data).expect("json")
    }

    #[test]
    fn fields_come_in_the_order_asked() {
        assert_eq!(
            completed(
                "{ b a { y x } }",
                json!({ "a": { "x": 1, "y": "y" }, "b": "b" }),
                None
            ),
            r#"{"b":"b","a":{"y":"y","x":1}}"#
        );
        // Fragments, inline fragments and merged fields keep the first appearance's place.
        assert_eq!(
            completed(
                "{ ...F b a { x } } fragment F on Query { a { y } }",
                json!({ "b": "b", "a": { "x": 1, "y": "y" } }),
                None
            ),
            r#"{"a":{"y":"y","x":1},"b":"b"}"#
        );
        assert_eq!(
            completed(
                "{ ... on Query { b } a { x } }",
                json!({ "a": { "x": 1 }, "b": "b" }),
                None
            ),
            r#"{"b":"b","a":{"x":1}}"#
        );
    }

    #[test]
    fn a_failed_nullable_field_answers_null() {
        assert_eq!(
            completed("{ b a { x } }", json!({ "b": "b" }), Some(&["a"])),
            r#"{"b":"b","a":null}"#
        );
        // Every root field failed: the executor answers data null; completion gives the object.
        assert_eq!(
            completed("{ a { x } }", json!(null), Some(&["a"])),
            r#"{"a":null}"#
        );
    }

    #[test]
    fn a_null_in_a_non_null_place_reaches_the_nearest_nullable_ancestor() {
        // a.x is Int!: a (nullable) becomes null.
        assert_eq!(
            completed(
                "{ b a { y x } }",
                json!({ "b": "b", "a": { "y": "y" } }),
                Some(&["a", "x"])
            ),
            r#"{"b":"b","a":null}"#
        );
        // Two levels down: a.z.x fails, z is nullable.
        assert_eq!(
            completed(
                "{ a { x z { x } } }",
                json!({ "a": { "x": 1, "z": {} } }),
                Some(&["a", "z", "x"])
            ),
            r#"{"a":{"x":1,"z":null}}"#
        );
        // An item of [A!] fails: the list (nullable) becomes null.
        assert_eq!(
            completed(
                "{ list { x } b }",
                json!({ "b": "b", "list": [{ "x": 1 }, {}] }),
                Some(&["list", "1", "x"])
            ),
            r#"{"list":null,"b":"b"}"#
        );
        // b is String!: all of data becomes null.
        assert_eq!(
            completed("{ a { x } b }", json!({ "a": { "x": 1 } }), Some(&["b"])),
            "null"
        );
        assert_eq!(
            completed(
                "{ must { x } }",
                json!({ "must": {} }),
                Some(&["must", "x"])
            ),
            "null"
        );
    }

    #[test]
    fn skipped_fields_are_not_expected() {
        assert_eq!(
            completed(
                "query($no: Boolean!) { b a @include(if: $no) { x } }",
                json!({ "b": "b" }),
                None
            ),
            r#"{"b":"b"}"#
        );
        assert_eq!(
            completed("{ b a @skip(if: true) { x } }", json!({ "b": "b" }), None),
            r#"{"b":"b"}"#
        );
    }

    #[test]
    fn a_request_error_keeps_no_data() {
        let types = OutputTypes::from_sdl(SDL).expect("sdl");
        let doc = async_graphql::parser::parse_query("{ b }").expect("query");
        let mut resp = Response::from_errors(vec![ServerError::new("invalid", None)]);
        complete(&types, &doc, None, &Variables::default(), &mut resp);
        assert_eq!(resp.data, ConstValue::Null);
    }
}
