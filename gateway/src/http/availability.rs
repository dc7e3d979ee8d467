//! Live availability (SPEC §5): one lot, the lots near a point, the stream of changes, the
//! FIWARE and DATEX II feeds — all read from the published board, never from the actor — and
//! the operator's recount of a gated lot without bay sensors.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use futures::Stream;
use parkflow_protocol::LotId;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use super::AppState;
use super::auth::{Staff, StaffAdmin};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::limit::ClientAddress;
use crate::availability::feeds::{self, FeedLot};
use crate::availability::{Board, LotAvailabilityView};
use crate::occupancy::{LotCounts, OccupancyMessage};
use crate::registry::{LotKind, Registry};

/// The widest `near` search.
pub(crate) const MAX_RADIUS_M: f64 = 50_000.0;
/// The most lots one `near` answer lists.
pub(crate) const MAX_NEAR_LIMIT: usize = 200;

fn lot_of<'r>(registry: &'r Registry, raw: &str) -> Result<&'r crate::registry::Lot, ApiError> {
    let id = LotId::parse(raw).map_err(|_| ApiError::NotFound("lot"))?;
    registry.lot_by_id(&id).ok_or(ApiError::NotFound("lot"))
}

pub(crate) fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /v1/lots/{lot}/availability` (the body rendered when the lot last changed).
#[utoipa::path(
    get, path = "/v1/lots/{lot}/availability", tag = "public",
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "The lot's live counts", body = LotAvailabilityView),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn one(
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Response, ApiError> {
    lot_body(&state.availability.board(), &lot).map(json)
}

/// A lot's availability, as the board last rendered it.
pub(crate) fn lot_body(board: &Board, raw_lot: &str) -> Result<Bytes, ApiError> {
    let lot = lot_of(&board.registry, raw_lot)?;
    board
        .lots
        .get(lot.idx as usize)
        .map(|availability| availability.json.clone())
        .ok_or(ApiError::NotFound("lot"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct NearQuery {
    /// `lat,lon` in degrees.
    near: String,
    radius_m: Option<f64>,
    limit: Option<usize>,
}

fn parse_point(near: &str) -> Option<(f64, f64)> {
    let (lat, lon) = near.split_once(',')?;
    let (lat, lon): (f64, f64) = (lat.trim().parse().ok()?, lon.trim().parse().ok()?);
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

/// `GET /v1/lots?near={lat},{lon}&radius_m={m}&limit={n}`: nearest first.
#[utoipa::path(
    get, path = "/v1/lots", tag = "public",
    params(NearQuery),
    responses(
        (status = 200, description = "Lots within the radius, nearest first; each is a lot's availability with its `distance_m` first", body = [LotAvailabilityView]),
    ),
)]
pub(crate) async fn near(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<NearQuery>,
) -> Result<Response, ApiError> {
    near_body(&state.availability.board(), &query).map(json)
}

/// The lots within the query's radius, nearest first: each lot's rendered body with its
/// distance put first.
pub(crate) fn near_body(board: &Board, query: &NearQuery) -> Result<Bytes, ApiError> {
    let (lat, lon) = parse_point(&query.near).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_point",
            "near must be `lat,lon` in degrees (latitude -90..90, longitude -180..180)",
        )
    })?;
    let radius = query.radius_m.unwrap_or(1_000.0);
    if !(radius > 0.0 && radius <= MAX_RADIUS_M) {
        return Err(ApiError::bad_request(
            "invalid_radius",
            format!("radius_m must be above 0 and at most {MAX_RADIUS_M}"),
        ));
    }
    let limit = query.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_NEAR_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_NEAR_LIMIT}"),
        ));
    }
    let registry = &board.registry;
    // Each lot's rendered body, with its distance put first: `{"distance_m":…,` + `"lot":…}`.
    let mut body = Vec::with_capacity(limit * 320);
    body.push(b'[');
    for (lot, distance) in registry.locator().near(lat, lon, radius, limit) {
        let Some(availability) = board.lots.get(lot as usize) else {
            continue;
        };
        if body.len() > 1 {
            body.push(b',');
        }
        push_distance(&mut body, distance);
        body.extend_from_slice(availability.json.get(1..).unwrap_or_default());
    }
    body.push(b']');
    Ok(Bytes::from(body))
}

/// `{"distance_m":…,` with one decimal, written from whole decimetres: formatting a float to
/// a precision costs more than the rest of a lot's entry.
fn push_distance(body: &mut Vec<u8>, metres: f64) {
    let decimetres = (metres * 10.0).round() as u64;
    // Writing into a Vec cannot fail.
    let _ = write!(
        body,
        "{{\"distance_m\":{}.{},",
        decimetres / 10,
        decimetres % 10
    );
}

/// `GET /v1/availability/stream`: one `availability` event per lot change, as server-sent events.
/// A client that falls more than the stream buffer behind is disconnected (it reconnects and
/// reads the current state with `GET /v1/lots/{lot}/availability`).
#[utoipa::path(
    get, path = "/v1/availability/stream", tag = "public",
    responses(
        (status = 200, description = "Server-sent events: one `availability` event (a lot's availability as JSON) per lot change", content_type = "text/event-stream", body = String),
        (status = 429, description = "Too many open streams from this client address (`too_many_streams`), or in all", body = super::error::ErrorBody),
    ),
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state
        .streams
        .admit(address)
        .ok_or_else(|| ApiError::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_streams",
            message: "too many open availability streams; close one or read the board".to_owned(),
        })?;
    // The stream ends at shutdown, or the server would wait for its clients forever; its slot
    // is freed when it ends.
    let events = futures::StreamExt::take_until(
        events(state.availability.subscribe()),
        state.shutdown.clone().cancelled_owned(),
    );
    let events = futures::StreamExt::map(events, move |event| {
        let _held = &slot;
        event
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A subscriber's events; the stream ends when the subscriber fell too far behind.
fn events(
    rx: broadcast::Receiver<Arc<LotAvailabilityView>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(view) => Some((Ok(event(&view)), rx)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "availability stream client too slow; dropped");
                None
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

fn event(view: &Arc<LotAvailabilityView>) -> Event {
    Event::default()
        .event("availability")
        .id(view.lot.clone())
        .json_data(view.as_ref())
        .unwrap_or_else(|_| Event::default().comment("unserializable"))
}

fn feed_lots<'r>(registry: &'r Registry, board: &Board) -> Vec<FeedLot<'r>> {
    registry
        .lots()
        .iter()
        .filter_map(|lot| {
            let a = board.lots.get(lot.idx as usize)?;
            Some(FeedLot {
                id: lot.id.as_str(),
                name: &lot.name,
                on_street: lot.kind == LotKind::OnStreet,
                lat: lot.location.lat,
                lon: lot.location.lon,
                total: a.counts.total,
                free: a.counts.free,
                occupied: a.counts.occupied,
                status: a.status,
                observed_at: a.observed_at,
            })
        })
        .collect()
}

/// `GET /v1/feeds/fiware`: NGSI-LD key-values entities (`application/ld+json`: each carries its `@context`).
#[utoipa::path(
    get, path = "/v1/feeds/fiware", tag = "public",
    responses(
        (status = 200, description = "NGSI-LD key-values OffStreetParking / OnStreetParking entities (FIWARE dataModel.Parking)", content_type = "application/ld+json", body = Vec<serde_json::Value>),
    ),
)]
pub(crate) async fn fiware(State(state): State<AppState>) -> Response {
    let board = state.availability.board();
    let body = feeds::fiware(&feed_lots(&board.registry, &board));
    (
        [(header::CONTENT_TYPE, "application/ld+json")],
        body.to_string(),
    )
        .into_response()
}

/// `GET /v1/feeds/datex2`: a DATEX II v3 parking status publication.
#[utoipa::path(
    get, path = "/v1/feeds/datex2", tag = "public",
    responses(
        (status = 200, description = "DATEX II v3 parking status publication", content_type = "application/xml", body = String),
    ),
)]
pub(crate) async fn datex2(State(state): State<AppState>) -> Result<Response, ApiError> {
    let board = state.availability.board();
    let xml = feeds::datex2(&feed_lots(&board.registry, &board), Utc::now()).map_err(|error| {
        ApiError::Store(crate::store::StoreError::Corrupt(format!(
            "datex ii feed not written: {error}"
        )))
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        xml,
    )
        .into_response())
}

/// `GET /v1/lots/{lot}/bays`: every bay of a lot with its sensor's health (battery low, last
/// heard) and its open stay — for the lot's operator.
#[utoipa::path(
    get, path = "/v1/lots/{lot}/bays", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "Every bay of the lot with its sensor's health and open stay", body = [crate::occupancy::BayView]),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn bays(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Json<Vec<crate::occupancy::BayView>>, ApiError> {
    let registry = state.registry.snapshot();
    let lot = scope.lot(&registry, &lot)?;
    if state.runs_elsewhere(lot) {
        // Another node runs the lot: the database's picture.
        return Ok(Json(
            crate::occupancy::store::bay_views(&state.db, &registry, lot).await?,
        ));
    }
    let (reply, answer) = oneshot::channel();
    state
        .occupancy
        .send(OccupancyMessage::Bays {
            lot: lot.idx,
            reply,
        })
        .await;
    Ok(Json(answer.await.map_err(|_| ApiError::Unavailable)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"occupied": 312}))]
pub(crate) struct RecountRequest {
    /// Cars counted in the lot now.
    occupied: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RecountResponse {
    lot: String,
    total: u32,
    free: u32,
    occupied: u32,
    unknown: u32,
}

/// `POST /v1/lots/{lot}/recount`: an operator counted the cars in a gated lot without bay
/// sensors; entries and exits move the count on from there.
#[utoipa::path(
    post, path = "/v1/lots/{lot}/recount", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = RecountRequest,
    responses(
        (status = 200, description = "The lot's counts after the recount", body = RecountResponse),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn recount(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(request): ApiJson<RecountRequest>,
) -> Result<Json<RecountResponse>, ApiError> {
    let registry = state.registry.snapshot();
    let lot = scope.lot(&registry, &lot)?;
    if registry.has_bay_sensors(lot.idx) {
        return Err(ApiError::bad_request(
            "lot_has_bay_sensors",
            "this lot's occupancy comes from its bay sensors; a recount applies to lots without them",
        ));
    }
    if request.occupied > lot.capacity {
        return Err(ApiError::bad_request(
            "above_capacity",
            format!("the lot has {} bays", lot.capacity),
        ));
    }
    let counts: LotCounts = match &state.node {
        // Another node runs the lot: the count is taken against the sessions open in the
        // database, and its owner applies it.
        Some((ownership, peers)) if !ownership.holds(lot.id.as_str()) => {
            let open = crate::occupancy::store::open_sessions(&state.db, lot.id.as_str()).await?;
            crate::occupancy::store::recount(
                &state.db,
                lot.id.as_str(),
                request.occupied,
                open,
                chrono::Utc::now(),
            )
            .await?;
            peers
                .tell(crate::cluster::Notice::Recounted {
                    lot: lot.id.to_string(),
                })
                .await;
            LotCounts {
                total: lot.capacity,
                free: lot.capacity - request.occupied,
                occupied: request.occupied,
                unknown: 0,
            }
        }
        _ => state
            .occupancy
            .recount(&state.db, lot, request.occupied)
            .await?
            .ok_or(ApiError::Unavailable)?,
    };
    Ok(Json(RecountResponse {
        lot: lot.id.to_string(),
        total: counts.total,
        free: counts.free,
        occupied: counts.occupied,
        unknown: counts.unknown,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::availability::{AvailabilityHandle, STREAM_BUFFER};
    use crate::registry::Location;
    use futures::StreamExt;

    #[test]
    fn distances_have_one_decimal_as_a_float_format_gives_them_away_from_ties() {
        for metres in [
            0.0,
            0.04,
            0.06,
            12.34,
            12.36,
            999.96,
            49_999.94,
            1_234.567_8,
        ] {
            let mut body = Vec::new();
            push_distance(&mut body, metres);
            assert_eq!(
                String::from_utf8(body).unwrap(),
                format!("{{\"distance_m\":{metres:.1},"),
                "{metres}"
            );
        }
    }

    fn view(lot: &str, occupied: u32) -> LotAvailabilityView {
        let counts = LotCounts {
            total: 10,
            free: 10 - occupied,
            occupied,
            unknown: 0,
        };
        LotAvailabilityView {
            lot: lot.to_owned(),
            name: "Lot".to_owned(),
            kind: LotKind::OnStreet,
            location: Location {
                lat: 30.0,
                lon: 120.0,
            },
            total: counts.total,
            free: counts.free,
            occupied: counts.occupied,
            unknown: 0,
            status: parkflow_protocol::LotStatus::SpacesAvailable,
            observed_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_subscriber_receives_the_changes_after_it_subscribed() {
        let handle = AvailabilityHandle::new(Board::default());
        handle.announce(view("before", 1));
        let mut stream = Box::pin(events(handle.subscribe()));
        handle.announce(view("after", 2));
        let first = stream.next().await.unwrap().unwrap();
        let text = format!("{first:?}");
        assert!(text.contains("after") && !text.contains("before"), "{text}");
    }

    #[tokio::test]
    async fn a_stalled_subscriber_is_dropped_and_the_others_are_not_held_back() {
        let handle = AvailabilityHandle::new(Board::default());
        let stalled = Box::pin(events(handle.subscribe()));
        let mut keeping_up = Box::pin(events(handle.subscribe()));
        assert_eq!(handle.subscribers(), 2);
        // The stalled one reads nothing while more changes than the buffer holds go by; the one
        // keeping up reads each as it comes, and announcing never waits for either.
        for i in 0..STREAM_BUFFER + 10 {
            handle.announce(view(&format!("lot-{i}"), 1));
            assert!(keeping_up.next().await.is_some());
        }
        let mut stalled = stalled;
        assert!(
            stalled.next().await.is_none(),
            "a subscriber that fell behind gets no more events"
        );
        drop(stalled);
        assert_eq!(handle.subscribers(), 1, "its place is given up");
    }

    #[test]
    fn points_parse_within_their_ranges() {
        assert_eq!(parse_point("30.27,120.15"), Some((30.27, 120.15)));
        assert_eq!(parse_point(" -33.9 , 151.2 "), Some((-33.9, 151.2)));
        assert_eq!(parse_point("91,0"), None);
        assert_eq!(parse_point("0,181"), None);
        assert_eq!(parse_point("30.27"), None);
        assert_eq!(parse_point("a,b"), None);
        assert_eq!(parse_point("NaN,1"), None);
    }
}
