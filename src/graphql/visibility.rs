//! The types only the platform team may know of, derived from the schema itself: every type the
//! SDL defines that no tenant-visible root field reaches (through arguments, results, input
//! fields, interfaces and union members). In a tenant's document, a name of one (a variable's type,
//! a fragment's type condition) is renamed to a placeholder before validation, which then answers
//! exactly as for an unknown type; the messages get the written name back.

use std::collections::HashSet;

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, Selection, SelectionSet, ServiceDocument,
    Type, TypeDefinition, TypeKind, TypeSystemDefinition,
};
use async_graphql::{Name, Positioned, ServerError};

use super::PLATFORM_ONLY;

/// Names of the types that only platform-only fields reach.
pub fn platform_only_types(sdl: &str) -> HashSet<String> {
    let Ok(doc) = async_graphql::parser::parse_schema(sdl) else {
        return HashSet::new();
    };
    let types: Vec<&TypeDefinition> = types(&doc).collect();
    let find = |name: &str| types.iter().find(|t| t.name.node.as_str() == name).copied();
    let mut reached: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = ["Query", "Mutation", "Subscription"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    while let Some(name) = todo.pop() {
        if !reached.insert(name.clone()) {
            continue;
        }
        let Some(def) = find(&name) else { continue };
        let mut refer = |ty: &Type| todo.push(base_name(ty).to_owned());
        match &def.kind {
            TypeKind::Object(o) => {
                for f in &o.fields {
                    let hidden = PLATFORM_ONLY
                        .iter()
                        .any(|(t, n)| *t == name && *n == f.node.name.node.as_str());
                    if hidden {
                        continue;
                    }
                    refer(&f.node.ty.node);
                    for a in &f.node.arguments {
                        refer(&a.node.ty.node);
                    }
                }
                for i in &o.implements {
                    todo.push(i.node.to_string());
                }
            }
            TypeKind::Interface(i) => {
                for f in &i.fields {
                    refer(&f.node.ty.node);
                    for a in &f.node.arguments {
                        refer(&a.node.ty.node);
                    }
                }
                // Implementations of a reachable interface are reachable.
                for t in &types {
                    if let TypeKind::Object(o) = &t.kind
                        && o.implements.iter().any(|n| n.node == def.name.node)
                    {
                        todo.push(t.name.node.to_string());
                    }
                }
            }
            TypeKind::Union(u) => {
                for m in &u.members {
                    todo.push(m.node.to_string());
                }
            }
            TypeKind::InputObject(i) => {
                for f in &i.fields {
                    refer(&f.node.ty.node);
                }
            }
            TypeKind::Scalar | TypeKind::Enum(_) => {}
        }
    }
    types
        .iter()
        .map(|t| t.name.node.to_string())
        .filter(|n| !reached.contains(n))
        .collect()
}

fn types(doc: &ServiceDocument) -> impl Iterator<Item = &TypeDefinition> {
    doc.definitions.iter().filter_map(|d| match d {
        TypeSystemDefinition::Type(t) => Some(&t.node),
        _ => None,
    })
}

fn base_name(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(n) => n.as_str(),
        BaseType::List(inner) => base_name(inner),
    }
}

/// Renames, in a tenant's document, every reference to a type of `hidden` (a variable's type, a
/// fragment's or inline fragment's type condition) to a placeholder no schema defines, so that
/// validation answers exactly as it does for an unknown type: the same errors, at the same places,
/// with the same codes (`restore` then puts the names the client wrote back into the messages).
/// Answers the placeholders and the names they stand for.
pub fn hide(doc: &mut ExecutableDocument, hidden: &HashSet<String>) -> Vec<(String, String)> {
    let mut renamed: Vec<(String, String)> = Vec::new();
    let mut rename = |name: &mut Name| {
        if !hidden.contains(name.as_str()) {
            return;
        }
        let original = name.to_string();
        let placeholder = match renamed.iter().find(|(_, o)| *o == original) {
            Some((p, _)) => p.clone(),
            None => {
                let p = format!("TollgateUnknownType{}", renamed.len());
                renamed.push((p.clone(), original));
                p
            }
        };
        *name = Name::new(placeholder);
    };
    fn base_name_mut(ty: &mut Type) -> &mut Name {
        match &mut ty.base {
            BaseType::Named(n) => n,
            BaseType::List(inner) => base_name_mut(inner),
        }
    }
    let mut sets: Vec<&mut SelectionSet> = Vec::new();
    let (operations, fragments) = (&mut doc.operations, &mut doc.fragments);
    let ops: Vec<&mut Positioned<async_graphql::parser::types::OperationDefinition>> =
        match operations {
            DocumentOperations::Single(op) => vec![op],
            DocumentOperations::Multiple(ops) => ops.values_mut().collect(),
        };
    for op in ops {
        for v in &mut op.node.variable_definitions {
            rename(base_name_mut(&mut v.node.var_type.node));
        }
        sets.push(&mut op.node.selection_set.node);
    }
    for frag in fragments.values_mut() {
        rename(&mut frag.node.type_condition.node.on.node);
        sets.push(&mut frag.node.selection_set.node);
    }
    // Inline fragments, at any depth (the document is bounded before this runs).
    while let Some(set) = sets.pop() {
        for sel in &mut set.items {
            match &mut sel.node {
                Selection::Field(f) => sets.push(&mut f.node.selection_set.node),
                Selection::InlineFragment(i) => {
                    if let Some(on) = &mut i.node.type_condition {
                        rename(&mut on.node.on.node);
                    }
                    sets.push(&mut i.node.selection_set.node);
                }
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    renamed
}

/// Puts the names a client wrote back into the messages of errors about their placeholders.
pub fn restore(errors: &mut [ServerError], renamed: &[(String, String)]) {
    for e in errors {
        for (placeholder, original) in renamed {
            if e.message.contains(placeholder.as_str()) {
                e.message = e.message.replace(placeholder.as_str(), original);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn platform_only_inputs_and_outputs_are_found_from_the_schema() {
        let settings = crate::config::Settings::parse_from_env_and(&[]).unwrap();
        let schema = super::super::build_schema(&settings);
        let hidden = super::platform_only_types(&schema.sdl());
        for t in [
            "AdjustUsageInput",
            "GrantCreditInput",
            "ResetUsageInput",
            "CreateOrganizationInput",
            "UpsertPlanInput",
        ] {
            assert!(hidden.contains(t), "{t} is platform-only: {hidden:?}");
        }
        for t in ["RecordUsageInput", "Organization", "UsageSummary", "Query"] {
            assert!(!hidden.contains(t), "{t} is not platform-only");
        }
    }
}
