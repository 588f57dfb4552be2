//! The customer GraphQL API (docs/graphql.md): `POST /graphql`, GraphiQL at `GET /graphql`
//! (its assets vendored under `graphiql/`, served at `/graphql/assets/`) outside production,
//! subscriptions at `/graphql/ws` (graphql-transport-ws, the protocol of the reference
//! `graphql-ws` client; the token goes in the `connection_init` payload).
//!
//! Callers authenticate with `Authorization: Bearer <jwt>`. `estimateJob` is open to
//! anyone; everything else needs a customer token (ops tokens may read everything and
//! cancel). Every id is checked for ownership.
//!
//! - `caller.rs`: who is calling (token checked against the database), quotas, AI budget
//! - `guard.rs`: what runs before anything recursive (nesting, depth, complexity, codes)
//! - `validation.rs`: the checks of customer input
//! - `queries.rs`, `mutations.rs`, `subscriptions.rs`: the resolvers
//! - `metrics.rs`: per-operation latency and errors by code
//! - `transport.rs`: HTTP and graphql-ws
//! - `types.rs`, `error.rs`: GraphQL types and the error boundary

mod caller;
mod error;
pub mod guard;
pub mod metrics;
mod mutations;
mod queries;
mod subscriptions;
mod transport;
mod types;
mod validation;

use async_graphql::{Context, Schema};

pub use caller::Caller;
pub use error::ApiError;
pub use mutations::MutationRoot;
pub use queries::QueryRoot;
pub use subscriptions::SubscriptionRoot;
pub use transport::routes;

use crate::api::ApiContext;
use caller::PricingLimiter;

/// The schema type.
pub type ArreglameSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Largest accepted request body: a photo of up to ~6 MiB once base64-encoded, plus text.
pub const MAX_BODY_BYTES: usize = 9 * 1024 * 1024;

pub(crate) fn state<'a>(ctx: &'a Context<'_>) -> &'a ApiContext {
    ctx.data_unchecked::<ApiContext>()
}

pub(crate) fn caller<'a>(ctx: &'a Context<'_>) -> &'a Caller {
    ctx.data_unchecked::<Caller>()
}

/// Builds the schema with the engine's limits (enforced by [`guard::Guard`], before
/// anything recursive runs).
pub fn build_schema(state: ApiContext) -> ArreglameSchema {
    let production = state.production;
    let limiter = PricingLimiter::new(state.pricing_rate_per_minute, state.pricing_rate_burst);
    let mut builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(state)
        .data(limiter)
        // Outside the guard: sees its document and the codes it gives.
        .extension(metrics::OperationMetrics)
        .extension(guard(production));
    if production {
        // Neither the schema nor "did you mean ...?" hints leak in production.
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder.finish()
}

/// The guard's limits; documents that only introspect get theirs outside production.
pub(crate) fn guard(production: bool) -> guard::Guard {
    guard::Guard {
        limits: guard::Limits::default(),
        introspection: (!production).then(guard::Limits::introspection),
        documents: std::sync::Arc::default(),
    }
}

/// The schema in SDL, as exported to docs/schema.graphql.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}
