//! Writes: price a job, post a request, cancel one.

use async_graphql::{Context, Object, ID};
use tracing::Instrument;

use super::{
    caller,
    caller::{pricing_gate, Caller},
    queries::load_readable,
    state,
    types::*,
    validation::{check_square_meters, check_text, MAX_ADDRESS_CHARS, MAX_DESCRIPTION_CHARS},
    ApiError,
};
use crate::{
    domain::{booking, Position, Status},
    pricing::JobInput,
    store::{CancelledBy, NewServiceRequest},
};

pub struct MutationRoot;

/// The root of writes.
#[Object(name = "Mutation")]
impl MutationRoot {
    /// Prices a job from a photo, a description and its size. Open to anyone.
    async fn estimate_job(
        &self,
        ctx: &Context<'_>,
        input: EstimateJobInput,
    ) -> async_graphql::Result<JobEstimate> {
        let state = state(ctx);
        check_text("description", &input.description, MAX_DESCRIPTION_CHARS)?;
        check_square_meters(state, input.square_meters)?;
        let job = job_input(
            input.image,
            input.description,
            input.square_meters,
            input.category,
            input.extras,
            input.difficulty,
        );
        let quote = price(ctx, &job).await?;
        Ok(JobEstimate::try_from(quote)?)
    }

    /// Posts a request: priced now (the price is locked), then dispatched to the nearest
    /// suitable worker. The same idempotency key returns the request it first created.
    async fn create_service_request(
        &self,
        ctx: &Context<'_>,
        input: CreateServiceRequestInput,
    ) -> async_graphql::Result<ServiceRequestNode> {
        // The root of the request's trace: the actor's dispatch and the offer frame are
        // its children (OTEL_EXPORTER_OTLP_ENDPOINT, tests/engine/traces.rs).
        let span = tracing::info_span!("createServiceRequest", request_id = tracing::field::Empty);
        create(ctx, input, &span).instrument(span.clone()).await
    }

    /// Cancels a request under the cancellation policy (docs/cancellation-policy.md):
    /// free while no worker is committed; a late fee once assigned; not once started;
    /// a completed job may be disputed while its cancellation window is open.
    async fn cancel_service_request(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reason: Option<String>,
    ) -> async_graphql::Result<ServiceRequestNode> {
        let row = load_readable(ctx, &id).await?;
        let by = match caller(ctx) {
            Caller::Ops(_) => CancelledBy::Ops,
            _ => CancelledBy::Customer,
        };
        if let Some(r) = &reason {
            check_text("reason", r, 500)?;
        }
        let state = state(ctx);
        let cancelled = if row.status == Status::Completed {
            let change = crate::store::Change::Cancelled {
                by,
                reason,
                fee: crate::domain::Cents::ZERO,
            };
            state
                .store
                .transition(&row, change)
                .await
                .map_err(ApiError::from)?
        } else {
            state
                .dispatcher
                .cancel(row.id, by, reason)
                .await
                .map_err(ApiError::from)?
        };
        Ok((&cancelled).into())
    }
}

async fn create(
    ctx: &Context<'_>,
    input: CreateServiceRequestInput,
    span: &tracing::Span,
) -> async_graphql::Result<ServiceRequestNode> {
    let customer = caller(ctx).require_customer()?;
    let state = state(ctx);
    check_text("description", &input.description, MAX_DESCRIPTION_CHARS)?;
    check_text("address", &input.address, MAX_ADDRESS_CHARS)?;
    check_square_meters(state, input.square_meters)?;
    if let Some(key) = &input.idempotency_key {
        check_text("idempotencyKey", key, 100)?;
    }
    let Position { lon, lat } = Position::new(input.longitude, input.latitude)
        .map_err(|e| ApiError::BadUserInput(format!("latitude/longitude: {e}")))?;
    let city = state
        .dispatcher
        .city_at(lon, lat)
        .ok_or_else(|| {
            ApiError::BadUserInput("this location is outside every city we serve".into())
        })?
        .id
        .clone();
    let job = job_input(
        input.image,
        input.description.clone(),
        input.square_meters,
        input.category,
        input.extras,
        input.difficulty,
    );
    let settings = state.dispatcher.settings();
    let now = chrono::Utc::now();
    let rules = booking::BookingRules {
        max_slot: settings.max_slot,
        horizon: settings.booking_horizon,
    };
    let slot = booking::check_slot(input.scheduled_start, input.scheduled_end, now, rules)
        .map_err(|e| ApiError::BadUserInput(e.to_string()))?;
    let status = booking::initial_status(slot, settings.dispatch_lead, now);
    let quote = price(ctx, &job).await?;
    let new = NewServiceRequest {
        customer_id: customer,
        city_id: city,
        latitude: lat,
        longitude: lon,
        address: input.address,
        description: input.description,
        square_meters: input.square_meters,
        image_ref: quote.image_ref.clone(),
        service_category: quote.breakdown.category.clone(),
        difficulty_level: quote.breakdown.difficulty_level.clone(),
        extras: quote
            .breakdown
            .extras
            .iter()
            .map(|(c, _)| c.clone())
            .collect(),
        currency: quote.currency.clone(),
        price_total: quote.total,
        worker_net: quote.worker_net,
        platform_fee: quote.platform_fee,
        pricing_engine: quote.engine.as_str().to_string(),
        idempotency_key: input.idempotency_key,
        slot,
        status,
    };
    let (row, created) = state
        .store
        .create_request(&new)
        .await
        .map_err(ApiError::from)?;
    span.record("request_id", tracing::field::display(row.id));
    // Outside the rollout percentage the legacy dispatcher takes it (docs/migration.md).
    if (created || row.status.is_open_for_dispatch()) && state.dispatcher.dispatches(row.id) {
        // The request is committed: the customer gets it whatever happens to its actor
        // now. One that cannot start (the database just went away, say) is brought back
        // by the WorkerAssignmentCron backstop within a sweep.
        // On a cluster node that does not own the city, the owner starts it.
        let started = if created {
            state.dispatcher.begin_dispatch(row.clone()).await
        } else {
            state.dispatcher.begin_dispatch_of(row.id).await
        };
        if let Err(e) = started {
            tracing::warn!(target: "GraphQL", request_id = %row.id, error = %e,
                    "request committed but its actor did not start; the backstop will start it");
        }
    }
    if created {
        metrics::counter!("arreglame_service_requests_created_total", "city" => new.city_id.clone()).increment(1);
        tracing::info!(target: "GraphQL", request_id = %row.id, customer = %customer, "service request created");
    }
    Ok((&row).into())
}

/// What the customer describes, as the pricing engine takes it.
fn job_input(
    image: Option<String>,
    description: String,
    square_meters: f64,
    category: Option<String>,
    extras: Option<Vec<String>>,
    difficulty: Option<Difficulty>,
) -> JobInput {
    JobInput {
        image_base64: image,
        description,
        square_meters,
        category,
        extras: extras.unwrap_or_default(),
        difficulty: difficulty.map(|d| d.code().to_string()),
    }
}

/// One quote from the caller's quota, with the AI only if this operation's budget allows.
async fn price(
    ctx: &Context<'_>,
    job: &JobInput,
) -> async_graphql::Result<crate::pricing::PriceQuote> {
    let ai = pricing_gate(ctx)?;
    Ok(state(ctx)
        .pricing
        .quote_with(job, ai)
        .await
        .map_err(ApiError::from)?)
}
