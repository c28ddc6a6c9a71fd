//! The OpenAPI 3.1 document, generated from the handlers' annotations so it cannot drift.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{dto, error, handlers};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Miqat", description = "Hajj caravan registration: seats, holds, waiting lists."),
    paths(
        handlers::waves, handlers::provinces, handlers::province_caravans, handlers::caravan,
        handlers::reserve, handlers::get_reservation, handlers::cancel, handlers::accept,
        handlers::join_waitlist, handlers::waitlist_me, handlers::event,
        handlers::admin_reservations, handlers::admin_stats, handlers::replace_waves,
        handlers::healthz, handlers::readyz, handlers::cluster_status, crate::metrics_text, serve,
    ),
    components(schemas(
        dto::ReserveRequest, dto::Credentials, dto::EventRequest, dto::Reservation, dto::Province,
        dto::Caravan, dto::CaravanSummary, dto::WaveDto, dto::WaitlistPlace, dto::ReservationPage,
        dto::Stats, dto::StatusCounts, error::Problem,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
