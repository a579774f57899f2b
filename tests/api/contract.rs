//! schema.graphql is the generated SDL, and a compatible superset of the contract in contract/
//! (core.graphql and money.graphql read as one document; the vendored copy of the shared contract,
//! which .ci/run checks is unchanged).

use std::collections::HashMap;

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{
    BaseType, InputValueDefinition, Type, TypeKind, TypeSystemDefinition,
};
use tollgate::config::Settings;
use tollgate::graphql::{build_schema, sdl};

fn generated() -> String {
    let settings =
        Settings::parse_from_env_and(&["--jwt-secret", crate::helpers::SECRET]).expect("settings");
    sdl(&build_schema(&settings))
}

#[test]
fn schema_file_is_the_generated_sdl() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let now = generated();
    if std::env::var("TOLLGATE_TEST_UPDATE_SCHEMA").is_ok_and(|v| v == "1") {
        std::fs::write(path, &now).expect("write schema.graphql");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == now,
        "schema.graphql is stale: run `TOLLGATE_TEST_UPDATE_SCHEMA=1 cargo test --test api contract` and commit it"
    );
}

struct Types {
    types: HashMap<String, TypeKind>,
}

/// The types of an SDL document; `extend type` (and `extend input`, `extend enum`, `extend union`)
/// adds to the type it extends, so several files read as one document.
fn load(sdl: &str) -> Types {
    let doc = parse_schema(sdl).expect("SDL parses");
    let mut types: HashMap<String, TypeKind> = HashMap::new();
    let mut extensions = Vec::new();
    for def in doc.definitions {
        if let TypeSystemDefinition::Type(t) = def {
            if t.node.extend {
                extensions.push(t.node);
            } else {
                types.insert(t.node.name.node.to_string(), t.node.kind);
            }
        }
    }
    for ext in extensions {
        let name = ext.name.node.to_string();
        match (types.get_mut(&name), ext.kind) {
            (Some(TypeKind::Object(o)), TypeKind::Object(e)) => o.fields.extend(e.fields),
            (Some(TypeKind::InputObject(o)), TypeKind::InputObject(e)) => o.fields.extend(e.fields),
            (Some(TypeKind::Enum(o)), TypeKind::Enum(e)) => o.values.extend(e.values),
            (Some(TypeKind::Union(o)), TypeKind::Union(e)) => o.members.extend(e.members),
            (None, kind) => {
                types.insert(name, kind);
            }
            _ => panic!("extend {name}: not the kind it extends"),
        }
    }
    Types { types }
}

/// The contract files the schema implements so far, read together as one document (memberships
/// comes with its issue).
const CONTRACT_FILES: &[&str] = &["core.graphql", "money.graphql", "memberships.graphql"];

/// An output type may be narrower: `X!` where the contract says `X`.
fn output_compatible(ours: &Type, theirs: &Type) -> bool {
    if !theirs.nullable && ours.nullable {
        return false;
    }
    match (&ours.base, &theirs.base) {
        (BaseType::Named(a), BaseType::Named(b)) => a == b,
        (BaseType::List(a), BaseType::List(b)) => output_compatible(a, b),
        _ => false,
    }
}

/// An input type may be wider: `X` where the contract says `X!`.
fn input_compatible(ours: &Type, theirs: &Type) -> bool {
    if !ours.nullable && theirs.nullable {
        return false;
    }
    match (&ours.base, &theirs.base) {
        (BaseType::Named(a), BaseType::Named(b)) => a == b,
        (BaseType::List(a), BaseType::List(b)) => input_compatible(a, b),
        _ => false,
    }
}

fn check_inputs(
    ctx: &str,
    ours: &[async_graphql::Positioned<InputValueDefinition>],
    theirs: &[async_graphql::Positioned<InputValueDefinition>],
    problems: &mut Vec<String>,
) {
    for t in theirs {
        let name = &t.node.name.node;
        match ours.iter().find(|o| &o.node.name.node == name) {
            None => problems.push(format!("{ctx}: missing argument/field {name}")),
            Some(o) => {
                // A default does not make `X!` accept what `X` does: an explicit null (or a null
                // variable) is still refused.
                if !input_compatible(&o.node.ty.node, &t.node.ty.node) {
                    problems.push(format!(
                        "{ctx}.{name}: {} is not compatible with {}",
                        o.node.ty.node, t.node.ty.node
                    ));
                }
            }
        }
    }
    // Anything we add must not be required, or contract clients would break.
    for o in ours {
        let name = &o.node.name.node;
        if !theirs.iter().any(|t| &t.node.name.node == name)
            && !o.node.ty.node.nullable
            && o.node.default_value.is_none()
        {
            problems.push(format!("{ctx}: added required argument/field {name}"));
        }
    }
}

#[test]
fn schema_is_a_compatible_superset_of_the_contract() {
    // The vendored copy (contract/), so a fresh clone tests against it with nothing beside it.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract");
    let contract: String = CONTRACT_FILES
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).expect("a contract file"))
        .collect::<Vec<_>>()
        .join("\n");
    let theirs = load(&contract);
    let ours = load(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
            .expect("schema.graphql"),
    );
    let mut problems = Vec::new();
    let mut compared = 0;
    for (name, kind) in &theirs.types {
        let Some(mine) = ours.types.get(name) else {
            problems.push(format!("missing type {name}"));
            continue;
        };
        compared += 1;
        match (kind, mine) {
            (TypeKind::Scalar, TypeKind::Scalar) => {}
            (TypeKind::Object(t), TypeKind::Object(o)) => {
                for f in &t.fields {
                    let fname = &f.node.name.node;
                    match o.fields.iter().find(|x| &x.node.name.node == fname) {
                        None => problems.push(format!("{name}.{fname} is missing")),
                        Some(of) => {
                            if !output_compatible(&of.node.ty.node, &f.node.ty.node) {
                                problems.push(format!(
                                    "{name}.{fname}: {} is not compatible with {}",
                                    of.node.ty.node, f.node.ty.node
                                ));
                            }
                            check_inputs(
                                &format!("{name}.{fname}"),
                                &of.node.arguments,
                                &f.node.arguments,
                                &mut problems,
                            );
                        }
                    }
                }
            }
            (TypeKind::Enum(t), TypeKind::Enum(o)) => {
                for v in &t.values {
                    if !o
                        .values
                        .iter()
                        .any(|x| x.node.value.node == v.node.value.node)
                    {
                        problems.push(format!("enum {name} lacks {}", v.node.value.node));
                    }
                }
            }
            (TypeKind::InputObject(t), TypeKind::InputObject(o)) => {
                check_inputs(name, &o.fields, &t.fields, &mut problems);
            }
            (TypeKind::Union(t), TypeKind::Union(o)) => {
                for m in &t.members {
                    if !o.members.iter().any(|x| x.node == m.node) {
                        problems.push(format!("union {name} lacks {}", m.node));
                    }
                }
            }
            (TypeKind::Interface(t), TypeKind::Interface(o)) => {
                for f in &t.fields {
                    if !o
                        .fields
                        .iter()
                        .any(|x| x.node.name.node == f.node.name.node)
                    {
                        problems.push(format!("interface {name} lacks {}", f.node.name.node));
                    }
                }
            }
            _ => problems.push(format!("{name} is a different kind of type")),
        }
    }
    assert!(
        compared > 40,
        "the contract parsed to too few types ({compared})"
    );
    assert!(
        problems.is_empty(),
        "schema.graphql breaks the contract:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_notices_a_break() {
    // The comparison itself must be able to fail: a contract field we do not have is reported.
    let ours = load("type Query { a: Int }");
    let theirs = load("type Query { a: Int b: String }");
    let (TypeKind::Object(o), TypeKind::Object(t)) = (&ours.types["Query"], &theirs.types["Query"])
    else {
        panic!()
    };
    assert!(t.fields.iter().any(|f| {
        !o.fields
            .iter()
            .any(|x| x.node.name.node == f.node.name.node)
    }));
    let narrower = parse_schema("type Q { a: Int! b: Int }").unwrap();
    let TypeSystemDefinition::Type(q) = &narrower.definitions[0] else {
        panic!()
    };
    let TypeKind::Object(q) = &q.node.kind else {
        panic!()
    };
    assert!(output_compatible(
        &q.fields[0].node.ty.node,
        &q.fields[1].node.ty.node
    ));
    assert!(!output_compatible(
        &q.fields[1].node.ty.node,
        &q.fields[0].node.ty.node
    ));
    // An input may be wider, never narrower, even with a default.
    let args =
        parse_schema("type Q { f(narrow: Boolean! = false, wide: Boolean = false): Int }").unwrap();
    let TypeSystemDefinition::Type(q) = &args.definitions[0] else {
        panic!()
    };
    let TypeKind::Object(q) = &q.node.kind else {
        panic!()
    };
    let (narrow, wide) = (
        &q.fields[0].node.arguments[0].node.ty.node,
        &q.fields[0].node.arguments[1].node.ty.node,
    );
    assert!(!input_compatible(narrow, wide));
    assert!(input_compatible(wide, narrow));
}
