//! Per-operation GraphQL metrics, as an extension on the schema (so `POST /graphql` and
//! graphql-ws alike):
//!
//! - `arreglame_graphql_operation_duration_seconds{operation,type}`: a histogram; `operation`
//!   is the operation's name (`anonymous` without one), `type` is `query`, `mutation` or
//!   `subscription`. For a request, from its arrival to its response; for a graphql-ws
//!   operation, to its first response (a subscription's snapshot, or a query's only answer).
//!   A document that does not parse has no type and is not timed (its error is counted).
//! - `arreglame_graphql_errors_total{code}`: one per error returned, by `extensions.code`.
//!
//! Operation names are chosen by clients, so the label is bounded: past
//! [`MAX_OPERATION_NAMES`] distinct names, new ones are counted as `other`; a name longer
//! than 64 characters is `other` too. Codes outside the engine's list are `OTHER`.
//!
//! Registered before [`super::guard::Guard`], so its `request` and `subscribe` see the
//! errors after the guard has given each its code, and its `parse_query` sees the guard's
//! document.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use async_graphql::{
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
        NextRequest, NextSubscribe,
    },
    parser::types::{ExecutableDocument, OperationType},
    Request, Response, ServerError, ServerResult, Variables,
};
use futures::stream::BoxStream;

use super::guard::codes;

pub const DURATION: &str = "arreglame_graphql_operation_duration_seconds";
pub const ERRORS: &str = "arreglame_graphql_errors_total";

/// Distinct operation names kept as label values.
pub const MAX_OPERATION_NAMES: usize = 200;

/// Every `extensions.code` the engine gives (guard.rs, error.rs, caller.rs).
const KNOWN_CODES: &[&str] = &[
    codes::PARSE_FAILED,
    codes::VALIDATION_FAILED,
    codes::QUERY_TOO_COMPLEX,
    codes::BAD_REQUEST,
    "BAD_USER_INPUT",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "INTERNAL",
    "RATE_LIMITED",
];

/// The extension factory (see the module documentation).
pub struct OperationMetrics;

impl ExtensionFactory for OperationMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        describe();
        Arc::new(MetricsExtension::default())
    }
}

fn describe() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        metrics::describe_histogram!(
            DURATION,
            metrics::Unit::Seconds,
            "GraphQL operations by name and type: time to the response (to the first one over graphql-ws)"
        );
        metrics::describe_counter!(ERRORS, "GraphQL errors returned, by extensions.code");
    });
}

/// One request's (or graphql-ws operation's) extension: created anew for each. Shared with
/// the response stream of a graphql-ws operation, which outlives the extension's borrow.
#[derive(Default)]
struct MetricsExtension(Arc<Labels>);

#[derive(Default)]
struct Labels {
    /// The operation name the request asked for.
    requested: Mutex<Option<String>>,
    /// The operation's label values, once the document parsed.
    operation: Mutex<Option<(String, &'static str)>>,
}

impl Labels {
    /// Times the operation, if its document parsed.
    fn time(&self, started: Instant) {
        let operation = self.operation.lock().map(|o| o.clone()).unwrap_or(None);
        if let Some((name, kind)) = operation {
            metrics::histogram!(DURATION, "operation" => name, "type" => kind)
                .record(started.elapsed().as_secs_f64());
        }
    }
}

fn count_errors(errors: &[ServerError]) {
    for error in errors {
        let code = error
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .and_then(|v| match v {
                async_graphql::Value::String(s) => Some(s.as_str()),
                _ => None,
            });
        let code = match code {
            Some(code) => KNOWN_CODES
                .iter()
                .find(|known| **known == code)
                .copied()
                .unwrap_or("OTHER"),
            None => "NONE",
        };
        metrics::counter!(ERRORS, "code" => code).increment(1);
    }
}

/// The label of an operation name: itself while few names are known, else `other`.
fn operation_label(name: Option<&str>) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Some(name) = name else {
        return "anonymous".into();
    };
    if name.len() > 64 {
        return "other".into();
    }
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen.contains(name) {
        return name.to_string();
    }
    if seen.len() < MAX_OPERATION_NAMES {
        seen.insert(name.to_string());
        return name.to_string();
    }
    "other".into()
}

/// The operation the request runs: the named one, or the only one.
fn selected(doc: &ExecutableDocument, requested: Option<&str>) -> Option<(String, &'static str)> {
    let (name, operation) = match requested {
        Some(wanted) => doc
            .operations
            .iter()
            .find(|(name, _)| name.map(|n| n.as_str()) == Some(wanted))?,
        None => {
            let mut all = doc.operations.iter();
            let only = all.next()?;
            if all.next().is_some() {
                return None;
            }
            only
        }
    };
    let kind = match operation.node.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    Some((operation_label(name.map(|n| n.as_str())), kind))
}

#[async_graphql::async_trait::async_trait]
impl Extension for MetricsExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        self.0.time(started);
        count_errors(&response.errors);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        use futures::StreamExt;
        let started = Instant::now();
        let labels = self.0.clone();
        let mut first = true;
        next.run(ctx, stream)
            .map(move |response| {
                if std::mem::take(&mut first) {
                    labels.time(started);
                }
                count_errors(&response.errors);
                response
            })
            .boxed()
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if let Ok(mut requested) = self.0.requested.lock() {
            requested.clone_from(&request.operation_name);
        }
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let requested = self.0.requested.lock().map(|r| r.clone()).unwrap_or(None);
        if let Ok(mut operation) = self.0.operation.lock() {
            *operation = selected(&doc, requested.as_deref());
        }
        Ok(doc)
    }
}
