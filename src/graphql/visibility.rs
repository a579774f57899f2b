//! The types only the platform team may know of, derived from the schema itself: every type the
//! SDL defines that no tenant-visible root field reaches (through arguments, results, input
//! fields, interfaces and union members). A tenant's document naming one (a variable's type, a
//! fragment's type condition) is refused with exactly the message of an unknown type, as the
//! platform-only fields are refused like unknown fields.

use std::collections::HashSet;

use async_graphql::parser::types::{
    BaseType, ExecutableDocument, Selection, SelectionSet, ServiceDocument, Type, TypeDefinition,
    TypeKind, TypeSystemDefinition,
};
use async_graphql::{Pos, ServerError};

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

/// The first place a document names one of `hidden`, refused as validation refuses an unknown type.
pub fn check(doc: &ExecutableDocument, hidden: &HashSet<String>) -> Result<(), ServerError> {
    let unknown = |name: &str, pos: Pos| {
        if hidden.contains(name) {
            Err(ServerError::new(
                format!(r#"Unknown type "{name}""#),
                Some(pos),
            ))
        } else {
            Ok(())
        }
    };
    let mut sets: Vec<&SelectionSet> = Vec::new();
    for (_, op) in doc.operations.iter() {
        for v in &op.node.variable_definitions {
            unknown(base_name(&v.node.var_type.node), v.node.var_type.pos)?;
        }
        sets.push(&op.node.selection_set.node);
    }
    for (_, frag) in doc.fragments.iter() {
        let on = &frag.node.type_condition;
        unknown(on.node.on.node.as_str(), on.pos)?;
        sets.push(&frag.node.selection_set.node);
    }
    // Inline fragments, at any depth (the document is bounded before this runs).
    while let Some(set) = sets.pop() {
        for sel in &set.items {
            match &sel.node {
                Selection::Field(f) => sets.push(&f.node.selection_set.node),
                Selection::InlineFragment(i) => {
                    if let Some(on) = &i.node.type_condition {
                        unknown(on.node.on.node.as_str(), on.pos)?;
                    }
                    sets.push(&i.node.selection_set.node);
                }
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    Ok(())
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
