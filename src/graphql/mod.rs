//! The GraphQL API: schema, request context, and the tenant gate. Only this module (and `http`)
//! import async-graphql. Resolvers are thin: they parse arguments, call `domain`, shape the answer.

pub mod completion;
pub mod documents;
pub mod limits;
pub mod loaders;
pub mod memberships;
pub mod money;
pub mod mutation;
pub mod query;
pub mod responses;
pub mod scalars;
pub mod subscription;
pub mod types;
pub mod visibility;

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{
    Context, Pos, Positioned, SDLExportOptions, Schema, ServerError, ServerResult,
    ValidationResult, Variables,
};
use base64::Engine as _;
use serde::{Serialize, de::DeserializeOwned};

use crate::config::Settings;
use crate::domain::usage::Engine;
use crate::domain::{OrganizationId, Scope, Viewer};
use crate::error::AppError;

pub type TollgateSchema = Schema<Query, Mutation, subscription::Subscription>;

/// The query root: the core API and each capability's part, merged into one `Query` type.
#[derive(async_graphql::MergedObject, Default)]
pub struct Query(
    query::CoreQuery,
    money::MoneyQuery,
    memberships::MembershipsQuery,
);

/// The mutation root, merged like `Query`.
#[derive(async_graphql::MergedObject, Default)]
pub struct Mutation(
    mutation::CoreMutation,
    money::MoneyMutation,
    memberships::MembershipsMutation,
);

/// Fields of the root types that only the platform team sees (DESIGN.md). For anyone else they are
/// absent from introspection and rejected as unknown fields before execution.
pub const PLATFORM_ONLY: &[(&str, &str)] = &[
    ("Query", "organizations"),
    ("Query", "planHistory"),
    ("Mutation", "grantCredit"),
    ("Mutation", "adjustUsage"),
    ("Mutation", "resetUsage"),
    ("Mutation", "createOrganization"),
    ("Mutation", "upsertPlan"),
    ("Query", "platformRevenue"),
    ("Mutation", "billOverage"),
];

/// Everything a request carries: the caller (None without a token) and its per-request loaders.
pub struct RequestCtx {
    pub engine: Engine,
    pub settings: Arc<Settings>,
    pub viewer: Option<Viewer>,
    /// Shared so that a long-lived operation (a subscription) can forget what it loaded between
    /// results: each pushed result is resolved against fresh data.
    pub loaders: Arc<DataLoader<Loaders, async_graphql::dataloader::HashMapCache>>,
}

pub use loaders::Loaders;

impl RequestCtx {
    pub fn new(engine: Engine, settings: Arc<Settings>, viewer: Option<Viewer>) -> Self {
        let scope = viewer
            .as_ref()
            .map(Viewer::scope)
            .unwrap_or(Scope::Tenant(OrganizationId(uuid::Uuid::nil())));
        // The request's reads share one transaction that carries its scope (row-level security).
        let engine = engine.scoped(scope);
        // The cache makes a key loaded (or fed) once per request; batching alone would not.
        let loaders = Arc::new(DataLoader::with_cache(
            Loaders {
                engine: engine.clone(),
                scope,
            },
            tokio::spawn,
            async_graphql::dataloader::HashMapCache::default(),
        ));
        RequestCtx {
            engine,
            settings,
            viewer,
            loaders,
        }
    }

    /// Forgets what the loaders cached (between the results of a subscription).
    pub fn forget(loaders: &DataLoader<Loaders, async_graphql::dataloader::HashMapCache>) {
        loaders.clear::<uuid::Uuid>();
        loaders.clear::<OrganizationId>();
        loaders.clear::<loaders::UsageKey>();
        loaders.clear::<loaders::MembershipPlanKey>();
        loaders.clear::<loaders::CustomerMembershipsKey>();
        loaders.clear::<loaders::CycleUsageKey>();
        loaders.clear::<loaders::MembershipKey>();
        loaders.clear::<loaders::CustomerKey>();
        loaders.clear::<loaders::BookingRefKey>();
    }

    pub fn viewer(&self) -> Result<&Viewer, AppError> {
        self.viewer
            .as_ref()
            .ok_or_else(|| AppError::Unauthenticated("authentication required".into()))
    }

    /// The scope of the caller; an anonymous caller sees no tenant data.
    pub fn scope(&self) -> Scope {
        self.viewer
            .as_ref()
            .map(Viewer::scope)
            .unwrap_or(Scope::Tenant(OrganizationId(uuid::Uuid::nil())))
    }
}

pub fn request_ctx<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a RequestCtx> {
    ctx.data::<RequestCtx>()
}

/// `visible` predicate of the platform-only fields and their input types.
pub fn platform_only(ctx: &Context<'_>) -> bool {
    ctx.data_opt::<RequestCtx>()
        .and_then(|r| r.viewer.as_ref())
        .is_some_and(|v| v.platform)
}

/// The complexity of a connection: its page (`first`, default 20) times what each item selects, so
/// a page's cost is weighed by its size (the configured maximum page size is checked apart).
pub fn page_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let items = first.unwrap_or(20).clamp(1, 10_000) as usize;
    items
        .saturating_mul(child_complexity.max(1))
        .saturating_add(1)
}

/// The complexity of a history (usageHistory, revenue): its periods (default 12, at most 120
/// counted) times what each period selects.
pub fn history_complexity(
    from: Option<scalars::Date>,
    to: Option<scalars::Date>,
    child_complexity: usize,
) -> usize {
    use chrono::Datelike;
    let months = |d: chrono::NaiveDate| d.year() as i64 * 12 + d.month0() as i64;
    let periods = match (from, to) {
        (Some(f), Some(t)) => months(t.0) - months(f.0) + 1,
        (Some(f), None) => months(chrono::Utc::now().date_naive()) - months(f.0) + 1,
        _ => 12,
    }
    .clamp(1, 120) as usize;
    periods
        .saturating_mul(child_complexity.max(1))
        .saturating_add(1)
}

/// The page size of a connection: `first` (default 20) within the configured maximum.
pub fn connection_args(rc: &RequestCtx, first: Option<i32>) -> async_graphql::Result<usize> {
    let max = rc.settings.max_page_size;
    match first {
        None => Ok(20.min(max)),
        Some(n) if n < 0 => Err(AppError::bad_input("first must not be negative").into()),
        Some(n) if n as usize > max => {
            Err(AppError::bad_input(format!("first must be at most {max}")).into())
        }
        Some(n) => Ok(n as usize),
    }
}

/// A page of `rows`, fetched with one more than `limit` to know whether more follow, as a
/// connection: each row's cursor from `cursor`, its node from `node`, `extra` its additional fields.
pub fn page_of<T, N, E>(
    rows: Vec<T>,
    limit: usize,
    after: bool,
    extra: E,
    cursor: impl Fn(&T) -> String,
    node: impl Fn(T) -> N,
) -> async_graphql::connection::Connection<String, N, E, async_graphql::connection::EmptyFields>
where
    N: async_graphql::OutputType,
    E: async_graphql::ObjectType,
{
    let mut conn = async_graphql::connection::Connection::with_additional_fields(
        after,
        rows.len() > limit,
        extra,
    );
    conn.edges.extend(
        rows.into_iter()
            .take(limit)
            .map(|r| async_graphql::connection::Edge::new(cursor(&r), node(r))),
    );
    conn
}

pub fn cursor_encode<T: Serialize>(key: &T) -> String {
    let json = serde_json::to_vec(key).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

pub fn cursor_decode<T: DeserializeOwned>(cursor: &str) -> async_graphql::Result<T> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| AppError::bad_input("invalid cursor").into())
}

/// The operation a request runs: the one it names, or the document's only one.
pub fn operation<'a>(
    doc: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), None) => Some(op),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        _ => None,
    }
}

/// What the operation a request runs costs against the rate limits, per class: a query or
/// subscription is one query; in a mutation, each recordUsage and reverseUsage field (aliases
/// included) is one recording and each recordUsageBatch counts its items, and each other field is
/// one change. Nothing when the document names no runnable operation (it fails anyway).
pub fn operation_costs(
    doc: &ExecutableDocument,
    name: Option<&str>,
    variables: &Variables,
) -> Vec<(crate::ratelimit::Class, u32)> {
    use crate::ratelimit::Class;
    let Some(op) = operation(doc, name) else {
        return Vec::new();
    };
    if op.node.ty != OperationType::Mutation {
        return vec![(Class::Query, 1)];
    }
    let mut fields = Vec::new();
    root_fields(doc, &op.node.selection_set.node, 0, &mut fields);
    let mut costs: Vec<(Class, u32)> = Vec::new();
    for f in fields {
        let (class, n) = match f.name.node.as_str() {
            n if n.starts_with("__") => continue,
            "recordUsage" | "reverseUsage" => (Class::Record, 1),
            "recordUsageBatch" => (Class::Record, batch_len(f, variables).max(1)),
            _ => (Class::Admin, 1),
        };
        match costs.iter_mut().find(|(c, _)| *c == class) {
            Some((_, total)) => *total = total.saturating_add(n),
            None => costs.push((class, n)),
        }
    }
    costs
}

/// The number of items of a recordUsageBatch field's `inputs` (a literal list or a variable).
fn batch_len(field: &async_graphql::parser::types::Field, variables: &Variables) -> u32 {
    use async_graphql_value::Value as V;
    let Some(value) = field.get_argument("inputs") else {
        return 1;
    };
    let n = match &value.node {
        V::List(items) => items.len(),
        V::Variable(var) => match variables.get(var) {
            Some(async_graphql::Value::List(items)) => items.len(),
            _ => 1,
        },
        _ => 1,
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Every root field an operation selects, each occurrence counted (fragments spread twice count
/// twice; the document was bounded and found acyclic before this runs, and `depth` guards anyway).
fn root_fields<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    depth: usize,
    out: &mut Vec<&'a async_graphql::parser::types::Field>,
) {
    if depth > 64 {
        return;
    }
    for sel in &set.items {
        match &sel.node {
            Selection::Field(f) => out.push(&f.node),
            Selection::InlineFragment(i) => {
                root_fields(doc, &i.node.selection_set.node, depth + 1, out)
            }
            Selection::FragmentSpread(s) => {
                if let Some(f) = doc.fragments.get(&s.node.fragment_name.node) {
                    root_fields(doc, &f.node.selection_set.node, depth + 1, out);
                }
            }
        }
    }
}

/// The root type an operation of this kind runs on.
pub fn root_type(ty: OperationType) -> &'static str {
    match ty {
        OperationType::Query => "Query",
        OperationType::Mutation => "Mutation",
        OperationType::Subscription => "Subscription",
    }
}

/// Builds the schema with its limits. Migrations are not a side effect of this.
pub fn build_schema(settings: &Settings) -> TollgateSchema {
    let documents = documents::Documents::new(limits::DocumentLimits::from_settings(settings));
    build_schema_with(settings, Arc::new(documents), Arc::default())
}

/// The schema, completing responses with the parsed documents of `documents` (shared with the
/// transports, which fill it); `types` receives the output fields' types, for the transports to
/// complete the responses that do not pass the executor's `execute` hook (subscription events).
pub fn build_schema_with(
    settings: &Settings,
    documents: Arc<documents::Documents>,
    types: Arc<std::sync::OnceLock<completion::OutputTypes>>,
) -> TollgateSchema {
    let hidden: Arc<std::sync::OnceLock<std::collections::HashSet<String>>> = Arc::default();
    let gate = TenantGate {
        documents,
        types: types.clone(),
        limits: limits::DocumentLimits::from_settings(settings),
        hidden: hidden.clone(),
        max_page_size: settings.max_page_size,
    };
    let mut builder = Schema::build(
        Query::default(),
        Mutation::default(),
        subscription::Subscription,
    )
    .limit_depth(settings.max_depth)
    .limit_complexity(settings.max_complexity)
    .limit_recursive_depth(64)
    .disable_suggestions()
    .extension(gate);
    if !settings.introspection {
        builder = builder.disable_introspection();
    }
    let schema = builder.finish();
    // The output fields' types, for completing responses (the SDL is the schema's own account).
    let sdl = schema.sdl();
    let _ = types.set(completion::OutputTypes::from_sdl(&sdl).unwrap_or_default());
    let _ = hidden.set(visibility::platform_only_types(&sdl));
    schema
}

/// Whether a document's text holds a NUL, raw or escaped in a string (`\u0000`, `\u{0}`).
fn has_nul_text(query: &str) -> bool {
    if query.contains('\0') {
        return true;
    }
    let b = query.as_bytes();
    b.windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\\u")
        .any(|(i, _)| {
            let rest = &b[i + 2..];
            match rest.first() {
                Some(b'{') => {
                    let digits: Vec<u8> = rest[1..]
                        .iter()
                        .copied()
                        .take_while(|c| *c != b'}')
                        .collect();
                    !digits.is_empty() && digits.iter().all(|c| *c == b'0')
                }
                _ => rest.len() >= 4 && rest[..4].iter().all(|c| *c == b'0'),
            }
        })
}

/// Whether a value holds a string with a NUL character anywhere.
fn has_nul(v: &async_graphql::Value) -> bool {
    match v {
        async_graphql::Value::String(s) => s.contains('\0'),
        async_graphql::Value::Enum(e) => e.contains('\0'),
        async_graphql::Value::List(l) => l.iter().any(has_nul),
        async_graphql::Value::Object(o) => o.iter().any(|(k, x)| k.contains('\0') || has_nul(x)),
        _ => false,
    }
}

/// The customer wall: a CUSTOMER token reaches only the memberships part of the API (its own
/// records, which the domain checks id by id) and its organization's id, name and slug; everything
/// else of its organization (usage, alerts, plans, money) answers FORBIDDEN, wherever the field sits.
fn customer_may_resolve(parent: &str, field: &str) -> bool {
    if field.starts_with("__") {
        return true;
    }
    match parent {
        // `organization` stays: another organization's id is NOT_FOUND (as a missing one), its
        // own FORBIDDEN, as the resolver answers.
        "Query" => matches!(
            field,
            "viewer" | "organization" | "customer" | "membership" | "booking" | "quoteBooking"
        ),
        "Mutation" => matches!(
            field,
            "upsertMembershipPlan"
                | "createCustomer"
                | "subscribeCustomer"
                | "pauseMembership"
                | "resumeMembership"
                | "cancelMembership"
                | "grantMembershipCredit"
                | "adjustMembershipUsage"
                | "resetMembershipUsage"
                | "createBooking"
                | "updateBookingStatus"
                | "linkBooking"
                | "unlinkBooking"
        ),
        "Subscription" => field == "membershipUpdated",
        "Organization" => matches!(field, "id" | "name" | "slug"),
        _ => true,
    }
}

/// Longest error message sent (longer ones are cut: they quote the client's input).
const MESSAGE_MAX: usize = 400;

/// Gives every error a code (DESIGN.md: errors carry `extensions.code`). Ours always have one; the
/// executor's own do not: a request that does not parse or validate, an unknown operation, a
/// variable or argument that does not coerce (BAD_USER_INPUT). An error at a path that is none of
/// these is the server's (INTERNAL).
pub fn with_codes(resp: &mut async_graphql::Response) {
    for e in &mut resp.errors {
        // A parse error quotes the offending line whole: a huge line would come back whole.
        if e.message.len() > MESSAGE_MAX {
            let mut cut = MESSAGE_MAX;
            while !e.message.is_char_boundary(cut) {
                cut -= 1;
            }
            e.message.truncate(cut);
            e.message.push('…');
        }
        if e.extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some())
        {
            continue;
        }
        let input = e.path.is_empty()
            || [
                "Failed to parse",
                "Invalid value",
                "Expected input type",
                "Variable ",
            ]
            .iter()
            .any(|p| e.message.starts_with(p));
        let code = if input { "BAD_USER_INPUT" } else { "INTERNAL" };
        e.extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
    }
}

/// Logs a panic caught while executing an operation (the panic hook printed where it happened).
pub fn log_panic(operation: &str, panic: &(dyn std::any::Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    tracing::error!(operation, panic = %message, "an operation panicked; answered INTERNAL");
}

/// A stream of responses whose panic becomes one INTERNAL response (logged), ending the stream
/// there: a panicking resolver never takes its WebSocket or its other operations down.
pub fn catch_panics<S>(responses: S) -> impl futures_util::Stream<Item = async_graphql::Response>
where
    S: futures_util::Stream<Item = async_graphql::Response>,
{
    use futures_util::StreamExt as _;
    std::panic::AssertUnwindSafe(responses)
        .catch_unwind()
        .map(|result| {
            result.unwrap_or_else(|panic| {
                log_panic("websocket", panic.as_ref());
                internal_response()
            })
        })
}

/// The answer to an operation that failed inside the server: `data: null` and one INTERNAL error.
pub fn internal_response() -> async_graphql::Response {
    let mut err = ServerError::new("internal error", None);
    err.extensions
        .get_or_insert_with(Default::default)
        .set("code", "INTERNAL");
    let mut resp = async_graphql::Response::from_errors(vec![err]);
    resp.data = async_graphql::Value::Null;
    resp
}

/// The sorted SDL, as committed in schema.graphql.
pub fn sdl(schema: &TollgateSchema) -> String {
    schema.sdl_with_options(
        SDLExportOptions::new()
            .sorted_fields()
            .sorted_arguments()
            .sorted_enum_items(),
    )
}

/// Rejects, before validation, what the caller may not even know about: without a token anything but
/// introspection (UNAUTHENTICATED); for a tenant the platform-only fields, with exactly the message an
/// unknown field gets. After execution, completes the response as the specification asks (see
/// `completion`).
struct TenantGate {
    documents: Arc<documents::Documents>,
    types: Arc<std::sync::OnceLock<completion::OutputTypes>>,
    limits: limits::DocumentLimits,
    /// The types only the platform team may know of (`visibility`).
    hidden: Arc<std::sync::OnceLock<std::collections::HashSet<String>>>,
    max_page_size: usize,
}

impl ExtensionFactory for TenantGate {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(TenantGateExt {
            documents: self.documents.clone(),
            types: self.types.clone(),
            limits: self.limits,
            hidden: self.hidden.clone(),
            max_page_size: self.max_page_size,
            renamed: std::sync::Mutex::default(),
            request: std::sync::Mutex::default(),
            customer: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

struct TenantGateExt {
    documents: Arc<documents::Documents>,
    types: Arc<std::sync::OnceLock<completion::OutputTypes>>,
    limits: limits::DocumentLimits,
    hidden: Arc<std::sync::OnceLock<std::collections::HashSet<String>>>,
    max_page_size: usize,
    /// Platform-only type names this request's document used, and their placeholders.
    renamed: std::sync::Mutex<Vec<(String, String)>>,
    /// The request's document text and variables, seen at parsing, for completing its response.
    request: std::sync::Mutex<Option<(String, Variables)>>,
    /// The caller is a CUSTOMER (the customer wall applies), seen at parsing.
    customer: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Extension for TenantGateExt {
    /// The customer wall (`customer_may_resolve`), checked at every field.
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: async_graphql::extensions::ResolveInfo<'_>,
        next: async_graphql::extensions::NextResolve<'_>,
    ) -> ServerResult<Option<async_graphql::Value>> {
        if self.customer.load(std::sync::atomic::Ordering::Relaxed)
            && !customer_may_resolve(info.parent_type, info.name)
        {
            let mut e = ServerError::new(
                if info.parent_type == "Organization" {
                    "a customer reads only its organization's id, name and slug"
                } else {
                    "a customer reads only its own customer record, memberships and bookings"
                },
                None,
            );
            e.extensions
                .get_or_insert_with(Default::default)
                .set("code", "FORBIDDEN");
            let mut path: Vec<async_graphql::PathSegment> = std::iter::once(info.path_node)
                .chain(info.path_node.parents())
                .map(|n| match n.segment {
                    async_graphql::QueryPathSegment::Name(name) => {
                        async_graphql::PathSegment::Field(name.to_owned())
                    }
                    async_graphql::QueryPathSegment::Index(i) => {
                        async_graphql::PathSegment::Index(i)
                    }
                })
                .collect();
            path.reverse();
            e.path = path;
            return Err(e);
        }
        next.run(ctx, info).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // Bounded before anything walks it (see `limits`): the text before parsing, the document
        // before the executor's own walks (its recursion-depth check follows every spread, in
        // `next.run`), validation and the checks below. A document the kept documents hold
        // passed already; one they refused is parsed here once more to say why.
        let too_large = |msg: String| {
            let mut e = ServerError::new(msg, None);
            e.extensions
                .get_or_insert_with(Default::default)
                .set("code", "BAD_USER_INPUT");
            e
        };
        self.limits.check_text(query).map_err(too_large)?;
        // No text reaches the database with a NUL in it (Postgres refuses it): one rule for every
        // argument, literal or variable.
        if has_nul_text(query) || variables.iter().any(|(_, v)| has_nul(v)) {
            return Err(too_large(
                "text must not contain NUL (\\u0000) characters".to_owned(),
            ));
        }
        if self.documents.parsed(query).is_none()
            && let Ok(doc) = async_graphql::parser::parse_query(query)
        {
            self.limits.check_document(&doc).map_err(too_large)?;
        }
        let mut doc = next.run(ctx, query, variables).await?;
        // A required variable left out is a request error (the executor would only notice it at
        // the field, as a failure without a code). Checked when the document has one operation,
        // the one that runs.
        if let Some(op) = operation(&doc, None) {
            for v in &op.node.variable_definitions {
                let d = &v.node;
                let given = variables
                    .get(&d.name.node)
                    .is_some_and(|x| !matches!(x, async_graphql::Value::Null));
                if !d.var_type.node.nullable && d.default_value.is_none() && !given {
                    return Err(ServerError::new(
                        format!(
                            "Variable \"${}\" of required type \"{}\" was not provided.",
                            d.name.node, d.var_type.node
                        ),
                        Some(v.pos),
                    ));
                }
            }
        }
        if let Ok(mut seen) = self.request.lock() {
            *seen = Some((query.to_owned(), variables.clone()));
        }
        let viewer = ctx.data_opt::<RequestCtx>().and_then(|r| r.viewer.as_ref());
        // Known once per request, so the customer wall costs other callers one load per field.
        self.customer.store(
            viewer.is_some_and(Viewer::is_customer),
            std::sync::atomic::Ordering::Relaxed,
        );
        if !viewer.is_some_and(|v| v.platform)
            && let Some(hidden) = self.hidden.get()
        {
            let renamed = visibility::hide(&mut doc, hidden);
            if !renamed.is_empty()
                && let Ok(mut slot) = self.renamed.lock()
            {
                *slot = renamed;
            }
        }
        // A page size out of range is refused before anything runs, wherever the connection sits
        // (under a nullable parent it would otherwise only null that parent).
        check_page_sizes(&doc, variables, self.max_page_size)?;
        let mut roots: Vec<(
            &'static str,
            &Positioned<async_graphql::parser::types::Field>,
        )> = Vec::new();
        for (name, op) in doc.operations.iter() {
            let ty = root_type(op.node.ty);
            // The specification's "Single root field": the executor does not check it, and a
            // subscription selecting two would answer nothing but nulls.
            if op.node.ty == OperationType::Subscription
                && completion::root_field_count(&doc, &op.node, variables) != 1
            {
                let which = name.map_or("An anonymous subscription".to_owned(), |n| {
                    format!("Subscription \"{n}\"")
                });
                return Err(ServerError::new(
                    format!("{which} must select exactly one top level field."),
                    Some(op.pos),
                ));
            }
            collect_roots(ty, &op.node.selection_set.node, &mut roots);
        }
        for (_, frag) in doc.fragments.iter() {
            let on = frag.node.type_condition.node.on.node.as_str();
            for ty in ["Query", "Mutation", "Subscription"] {
                if on == ty {
                    collect_roots(ty, &frag.node.selection_set.node, &mut roots);
                }
            }
        }
        match viewer {
            None => {
                if let Some((_, f)) = roots
                    .iter()
                    .find(|(_, f)| !f.node.name.node.starts_with("__"))
                {
                    return Err(gate_error(
                        AppError::Unauthenticated("authentication required".into()),
                        f.pos,
                    ));
                }
            }
            Some(v) if !v.platform => {
                for (ty, f) in &roots {
                    let name = f.node.name.node.as_str();
                    if PLATFORM_ONLY.iter().any(|(t, n)| t == ty && *n == name) {
                        return Err(ServerError::new(
                            format!("Unknown field \"{name}\" on type \"{ty}\"."),
                            Some(f.pos),
                        ));
                    }
                }
            }
            Some(_) => {}
        }
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|mut errors| {
            if let Ok(renamed) = self.renamed.lock() {
                visibility::restore(&mut errors, &renamed);
            }
            errors
        })
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> async_graphql::Response {
        let mut resp = next.run(ctx, operation_name).await;
        let seen = self.request.lock().ok().and_then(|mut s| s.take());
        if let (Some((query, variables)), Some(types)) = (seen, self.types.get())
            && let Some(doc) = self.documents.parsed(&query)
        {
            completion::complete(types, &doc, operation_name, &variables, &mut resp);
        }
        resp
    }
}

/// Every `first:` argument (the page size of a connection), literal or variable, within 0..=max.
fn check_page_sizes(
    doc: &ExecutableDocument,
    variables: &Variables,
    max: usize,
) -> ServerResult<()> {
    use async_graphql_value::Value as V;
    let mut sets: Vec<&SelectionSet> = doc
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set.node)
        .chain(doc.fragments.values().map(|f| &f.node.selection_set.node))
        .collect();
    while let Some(set) = sets.pop() {
        for sel in &set.items {
            match &sel.node {
                Selection::Field(f) => {
                    if let Some((_, value)) = f
                        .node
                        .arguments
                        .iter()
                        .find(|(n, _)| n.node.as_str() == "first")
                    {
                        let n = match &value.node {
                            V::Variable(name) => match variables.get(name) {
                                Some(async_graphql::Value::Number(n)) => Some(n.as_f64()),
                                _ => None,
                            },
                            V::Number(n) => Some(n.as_f64()),
                            _ => None,
                        };
                        if let Some(Some(n)) = n
                            && (n < 0.0 || n > max as f64)
                        {
                            return Err(gate_error(
                                AppError::bad_input(format!("first must be between 0 and {max}")),
                                value.pos,
                            ));
                        }
                    }
                    sets.push(&f.node.selection_set.node);
                }
                Selection::InlineFragment(i) => sets.push(&i.node.selection_set.node),
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    Ok(())
}

fn gate_error(err: AppError, pos: Pos) -> ServerError {
    let gql: async_graphql::Error = err.into();
    gql.into_server_error(pos)
}

fn collect_roots<'a>(
    ty: &'static str,
    set: &'a SelectionSet,
    out: &mut Vec<(
        &'static str,
        &'a Positioned<async_graphql::parser::types::Field>,
    )>,
) {
    for sel in &set.items {
        match &sel.node {
            Selection::Field(f) => out.push((ty, f)),
            Selection::InlineFragment(inline) => {
                let same = inline
                    .node
                    .type_condition
                    .as_ref()
                    .is_none_or(|c| c.node.on.node.as_str() == ty);
                if same {
                    collect_roots(ty, &inline.node.selection_set.node, out);
                }
            }
            // Named fragments are checked where they are defined.
            Selection::FragmentSpread(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_is_found_raw_or_escaped() {
        assert!(super::has_nul_text("{ a(x: \"\0\") }"));
        assert!(super::has_nul_text(r#"{ a(x: "p\u0000x") }"#));
        assert!(super::has_nul_text(r#"{ a(x: "\u{00}") }"#));
        assert!(!super::has_nul_text(r#"{ a(x: "\u0041 \u{41}") }"#));
        assert!(!super::has_nul_text("{ a }"));
    }

    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_panicking_stream_answers_internal_and_ends() {
        let mut n = 0;
        let panicky = futures_util::stream::poll_fn(move |_| {
            n += 1;
            if n == 2 {
                panic!("a resolver panicked");
            }
            std::task::Poll::Ready(Some(async_graphql::Response::new(
                async_graphql::Value::Null,
            )))
        });
        let out: Vec<_> = super::catch_panics(panicky).collect().await;
        assert_eq!(
            out.len(),
            2,
            "one result, then the INTERNAL answer, then the end"
        );
        assert!(out[0].errors.is_empty());
        let code = out[1].errors[0]
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .cloned();
        assert_eq!(code, Some(async_graphql::Value::from("INTERNAL")));
    }
}
