//! The registry as operators edit it: their lots, gates, bays, tariff versions, passes and blocked
//! plates. Changes go through the same provisioning as the demo and tests, then the registry (and
//! for passes and blocks the gate and occupancy actors) reload, so they take effect at once.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use parkflow_billing::TariffDefinition;
use parkflow_protocol::standing::OfflinePolicy;
use parkflow_protocol::{BayId, DeviceAuth, GateId, LotId};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Scope, Staff, StaffAdmin};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, free_text};
use crate::registry::Location;
use crate::registry::{GateDirection, Lot, LotKind};
use crate::store::keys;
use crate::store::provision::{
    GateRemoval, LotChange, LotPlan, Plan, create_lot as create_lot_row, provision,
};

/// The most bays one request adds.
const MAX_BAYS_PER_REQUEST: usize = 10_000;
/// The most bays a lot may have.
const MAX_CAPACITY: u32 = 1_000_000;
/// The longest maximum stay a lot may set (a year).
const MAX_STAY_MINUTES: u32 = 366 * 24 * 60;

/// A lot as its operator sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LotView {
    id: String,
    operator_id: String,
    name: String,
    kind: LotKind,
    location: Location,
    capacity: u32,
    time_zone: String,
    device_auth: DeviceAuth,
    max_stay_minutes: Option<i64>,
    /// How its lanes let out, while the platform is away, a car their list does not name.
    offline_policy: OfflinePolicy,
    /// Whether its ANPR cameras' pictures are kept for review cases, until the plate retention
    /// period ends (off by default: pictures are dropped).
    review_pictures: bool,
}

impl From<&Lot> for LotView {
    fn from(lot: &Lot) -> Self {
        Self {
            id: lot.id.to_string(),
            operator_id: lot.operator_id.clone(),
            name: lot.name.clone(),
            kind: lot.kind,
            location: lot.location,
            capacity: lot.capacity,
            time_zone: lot.time_zone.clone(),
            device_auth: lot.device_auth,
            max_stay_minutes: lot.max_stay.map(|d| d.num_minutes()),
            offline_policy: lot.offline_policy,
            review_pictures: lot.review_pictures,
        }
    }
}

/// The provisioning plan of an existing lot with nothing below it: adding gates, bays or tariffs
/// to it leaves the lot itself as it is.
fn plan_of(lot: &Lot) -> LotPlan {
    LotPlan {
        id: lot.id.clone(),
        operator_id: lot.operator_id.clone(),
        name: lot.name.clone(),
        kind: lot.kind,
        lat: lot.location.lat,
        lon: lot.location.lon,
        capacity: lot.capacity,
        time_zone: lot.time_zone.clone(),
        device_auth: lot.device_auth,
        gates: Vec::new(),
        bays: Vec::new(),
        max_stay_minutes: lot
            .max_stay
            .and_then(|d| u32::try_from(d.num_minutes()).ok()),
        offline_policy: lot.offline_policy,
        tariffs: Vec::new(),
    }
}

/// The lot `raw` names, if the caller's scope sees it (another operator's answers 404).
pub(super) fn own_lot(state: &AppState, scope: &Scope, raw: &str) -> Result<LotPlan, ApiError> {
    Ok(plan_of(scope.lot(&state.registry.snapshot(), raw)?))
}

/// Applies `plan`, then reloads what depends on it.
pub(super) async fn apply(state: &AppState, plan: &Plan) -> Result<(), ApiError> {
    provision(&state.db, plan, Utc::now()).await?;
    state.registry.reload(&state.db).await?;
    if !plan.passes.is_empty() || !plan.blocks.is_empty() {
        state.gates.reload(&state.db).await;
        state.occupancy.reload_passes(&state.db).await;
    }
    Ok(())
}

fn lot_view(state: &AppState, id: &LotId) -> Result<LotView, ApiError> {
    let registry = state.registry.snapshot();
    registry
        .lot_by_id(id)
        .map(LotView::from)
        .ok_or(ApiError::NotFound("lot"))
}

/// `GET /v1/operators/{operator}/lots`
#[utoipa::path(
    get, path = "/v1/operators/{operator}/lots", tag = "operators",
    security(("api_key" = [])),
    params(("operator" = String, Path, description = "Operator id")),
    responses(
        (status = 200, description = "The operator's lots", body = [LotView]),
        (status = 404, description = "No such operator (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn lots(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(operator): ApiPath<String>,
) -> Result<Json<Vec<LotView>>, ApiError> {
    if !scope.sees(&operator) {
        return Err(ApiError::NotFound("operator"));
    }
    let registry = state.registry.snapshot();
    Ok(Json(
        registry
            .lots()
            .iter()
            .filter(|lot| lot.operator_id == operator)
            .map(LotView::from)
            .collect(),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "lot-westlake-p1", "name": "West Lake P1", "kind": "off_street", "location": {"lat": 30.2425, "lon": 120.1485}, "capacity": 400, "time_zone": "Asia/Shanghai", "device_auth": "signed", "max_stay_minutes": 1440}))]
pub(crate) struct LotRequest {
    id: String,
    name: String,
    kind: LotKind,
    location: Location,
    capacity: u32,
    /// IANA time zone (`Asia/Shanghai`).
    time_zone: String,
    #[serde(default)]
    device_auth: Option<DeviceAuth>,
    #[serde(default)]
    max_stay_minutes: Option<u32>,
    /// `open_and_invoice` (the default) or `hold_for_attendant`.
    #[serde(default)]
    offline_policy: Option<OfflinePolicy>,
    /// Keep ANPR cameras' pictures for review cases (default `false`).
    #[serde(default)]
    review_pictures: Option<bool>,
}

/// What an operator may set on a lot, checked: its name (returned trimmed), location, capacity
/// and maximum stay.
fn checked_lot_fields(
    name: &str,
    Location { lat, lon }: Location,
    capacity: u32,
    max_stay_minutes: Option<u32>,
) -> Result<String, ApiError> {
    let name = free_text("invalid_name", "name", name, 200)?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(ApiError::bad_request(
            "invalid_location",
            "lat must be within ±90, lon within ±180",
        ));
    }
    if capacity > MAX_CAPACITY {
        return Err(ApiError::bad_request(
            "invalid_capacity",
            format!("capacity is at most {MAX_CAPACITY}"),
        ));
    }
    if max_stay_minutes.is_some_and(|m| !(1..=MAX_STAY_MINUTES).contains(&m)) {
        return Err(ApiError::bad_request(
            "invalid_max_stay",
            format!("max_stay_minutes is 1 to {MAX_STAY_MINUTES}"),
        ));
    }
    Ok(name)
}

/// `POST /v1/operators/{operator}/lots`
#[utoipa::path(
    post, path = "/v1/operators/{operator}/lots", tag = "operators",
    security(("api_key" = [])),
    params(("operator" = String, Path, description = "Operator id")),
    request_body = LotRequest,
    responses(
        (status = 201, description = "Created", body = LotView),
        (status = 404, description = "No such operator (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
    ),
)]
pub(crate) async fn create_lot(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(operator): ApiPath<String>,
    ApiJson(request): ApiJson<LotRequest>,
) -> Result<(StatusCode, Json<LotView>), ApiError> {
    if !scope.sees(&operator)
        || keys::operators(&state.db, Some(&operator))
            .await?
            .is_empty()
    {
        return Err(ApiError::NotFound("operator"));
    }
    let id = LotId::parse(&request.id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    if state.registry.snapshot().lot_by_id(&id).is_some() {
        return Err(ApiError::conflict(
            "lot_exists",
            "a lot with this id exists",
        ));
    }
    let name = checked_lot_fields(
        &request.name,
        request.location,
        request.capacity,
        request.max_stay_minutes,
    )?;
    if request.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(ApiError::bad_request(
            "invalid_time_zone",
            "time_zone must be an IANA zone such as Asia/Shanghai",
        ));
    }
    enforced(&state, request.device_auth)?;
    let Location { lat, lon } = request.location;
    let lot = LotPlan {
        id: id.clone(),
        operator_id: operator,
        name,
        kind: request.kind,
        lat,
        lon,
        capacity: request.capacity,
        time_zone: request.time_zone,
        device_auth: request.device_auth.unwrap_or(DeviceAuth::Signed),
        gates: Vec::new(),
        bays: Vec::new(),
        max_stay_minutes: request.max_stay_minutes,
        offline_policy: request.offline_policy.unwrap_or_default(),
        tariffs: Vec::new(),
    };
    if !create_lot_row(&state.db, &lot, Utc::now()).await? {
        return Err(ApiError::conflict(
            "lot_exists",
            "a lot with this id exists",
        ));
    }
    if let Some(review_pictures) = request.review_pictures {
        let change = LotChange {
            review_pictures: Some(review_pictures),
            ..LotChange::default()
        };
        crate::store::provision::update_lot(&state.db, &id, &change).await?;
    }
    state.registry.reload(&state.db).await?;
    Ok((StatusCode::CREATED, Json(lot_view(&state, &id)?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "in-1", "direction": "entry"}))]
pub(crate) struct GateRequest {
    id: String,
    direction: GateDirection,
}

/// `POST /v1/lots/{lot}/gates` (a gate that exists gets the new direction).
#[utoipa::path(
    post, path = "/v1/lots/{lot}/gates", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = GateRequest,
    responses(
        (status = 201, description = "Added (a gate that exists takes the new direction)"),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn add_gate(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(request): ApiJson<GateRequest>,
) -> Result<StatusCode, ApiError> {
    let mut lot = own_lot(&state, &scope, &lot)?;
    let gate = GateId::parse(&request.id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    lot.gates.push((gate, request.direction));
    apply(
        &state,
        &Plan {
            lots: vec![lot],
            ..Plan::default()
        },
    )
    .await?;
    Ok(StatusCode::CREATED)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"bays": ["b-001", "b-002", "b-003"]}))]
pub(crate) struct BaysRequest {
    bays: Vec<String>,
}

/// `POST /v1/lots/{lot}/bays` (bays that exist are left as they are).
#[utoipa::path(
    post, path = "/v1/lots/{lot}/bays", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = BaysRequest,
    responses(
        (status = 201, description = "Added (bays that exist stay as they are)"),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn add_bays(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(request): ApiJson<BaysRequest>,
) -> Result<StatusCode, ApiError> {
    let mut lot = own_lot(&state, &scope, &lot)?;
    if request.bays.is_empty() || request.bays.len() > MAX_BAYS_PER_REQUEST {
        return Err(ApiError::bad_request(
            "invalid_bays",
            format!("send 1 to {MAX_BAYS_PER_REQUEST} bay ids"),
        ));
    }
    lot.bays = request
        .bays
        .iter()
        .map(|b| {
            BayId::parse(b).map_err(|e| ApiError::bad_request("invalid_bay", format!("{b:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    apply(
        &state,
        &Plan {
            lots: vec![lot],
            ..Plan::default()
        },
    )
    .await?;
    Ok(StatusCode::CREATED)
}

/// `POST /v1/lots/{lot}/tariffs`: a new version from its `effective_from` (SPEC §4's JSON,
/// validated); a version with the same `effective_from` exists → 409.
#[utoipa::path(
    post, path = "/v1/lots/{lot}/tariffs", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = TariffDefinition,
    responses(
        (status = 201, description = "The version takes effect from its `effective_from`"),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
    ),
)]
pub(crate) async fn add_tariff(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(definition): ApiJson<TariffDefinition>,
) -> Result<StatusCode, ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    parkflow_billing::Tariff::try_from(definition.clone())
        .map_err(|e| ApiError::bad_request("invalid_tariff", e.to_string()))?;
    let before = versions(&state, &lot.id);
    // Sessions are priced with the version in force at their entry: a version taking effect in
    // the past would reprice stays already billed. A lot's first version may start any time.
    if before > 0 && definition.effective_from < Utc::now() {
        return Err(ApiError::bad_request(
            "effective_from_in_past",
            "a new version takes effect from now or later",
        ));
    }
    if !crate::store::provision::add_tariff(&state.db, &lot.id, &definition, Utc::now()).await? {
        return Err(ApiError::conflict(
            "tariff_exists",
            "a version with this effective_from exists",
        ));
    }
    state.registry.reload(&state.db).await?;
    Ok(StatusCode::CREATED)
}

/// `GET /v1/lots/{lot}/tariffs`: every version, the earliest first.
#[utoipa::path(
    get, path = "/v1/lots/{lot}/tariffs", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "The lot's tariff versions, each from its `effective_from`", body = [TariffDefinition]),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn tariffs(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Json<Vec<TariffDefinition>>, ApiError> {
    let registry = state.registry.snapshot();
    let lot = scope.lot(&registry, &lot)?;
    Ok(Json(
        lot.tariffs
            .versions()
            .iter()
            .map(|t| t.definition().clone())
            .collect(),
    ))
}

fn versions(state: &AppState, lot: &LotId) -> usize {
    state
        .registry
        .snapshot()
        .lot_by_id(lot)
        .map_or(0, |l| l.tariffs.versions().len())
}

/// A change to a lot: the fields given change, the others stay. The id, operator, kind and time
/// zone (which dates its settlements) never change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "West Lake P2", "capacity": 420, "max_stay_minutes": null}))]
pub(crate) struct LotUpdate {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    capacity: Option<u32>,
    #[serde(default)]
    device_auth: Option<DeviceAuth>,
    /// `null` removes the maximum stay.
    #[serde(default, deserialize_with = "given")]
    #[schema(value_type = Option<u32>)]
    max_stay_minutes: Option<Option<u32>>,
    #[serde(default)]
    offline_policy: Option<OfflinePolicy>,
    /// Keep ANPR cameras' pictures for review cases, until the plate retention period ends.
    #[serde(default)]
    review_pictures: Option<bool>,
}

/// A field that may be `null`: absent is `None`, `null` is `Some(None)`.
fn given<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A lot may trust its broker for who speaks for its devices (`device_auth: broker`, unsigned
/// messages) only when the broker enforces each device's permissions: it asks the platform
/// (`--broker-hook-key`) or takes the platform's lists (`--broker-acl`). The embedded broker
/// enforces none.
fn enforced(state: &AppState, device_auth: Option<DeviceAuth>) -> Result<(), ApiError> {
    if device_auth == Some(DeviceAuth::Broker)
        && state.broker_hook.is_none()
        && state.broker_acl.is_none()
    {
        return Err(ApiError::bad_request(
            "broker_auth_unenforced",
            "device_auth broker needs a broker that enforces each device's topics (run with --broker-acl and Mosquitto, or --broker-hook-key and EMQX or VerneMQ; README, \"Production broker\"); keep signed",
        ));
    }
    Ok(())
}

/// `PATCH /v1/lots/{lot}`
#[utoipa::path(
    patch, path = "/v1/lots/{lot}", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = LotUpdate,
    responses(
        (status = 200, description = "The lot as it is now", body = LotView),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn update_lot(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(request): ApiJson<LotUpdate>,
) -> Result<Json<LotView>, ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    enforced(&state, request.device_auth)?;
    // Each given field is checked as the lot would have it; only given fields are written.
    let name = checked_lot_fields(
        request.name.as_deref().unwrap_or(&lot.name),
        request.location.unwrap_or(Location {
            lat: lot.lat,
            lon: lot.lon,
        }),
        request.capacity.unwrap_or(lot.capacity),
        request.max_stay_minutes.unwrap_or(lot.max_stay_minutes),
    )?;
    let change = LotChange {
        name: request.name.map(|_| name),
        location: request.location.map(|l| (l.lat, l.lon)),
        capacity: request.capacity,
        device_auth: request.device_auth,
        max_stay_minutes: request.max_stay_minutes,
        offline_policy: request.offline_policy,
        review_pictures: request.review_pictures,
    };
    crate::store::provision::update_lot(&state.db, &lot.id, &change).await?;
    state.registry.reload(&state.db).await?;
    Ok(Json(lot_view(&state, &lot.id)?))
}

/// `DELETE /v1/lots/{lot}/gates/{gate}`: a lane out of service (its camera revoked first).
#[utoipa::path(
    delete, path = "/v1/lots/{lot}/gates/{gate}", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id"), ("gate" = String, Path, description = "Gate id")),
    responses(
        (status = 204, description = "Removed: its reads are refused from now on"),
        (status = 404, description = "No such lot or gate (or not this caller's)", body = ErrorBody),
        (status = 409, description = "A camera is registered to the gate: revoke it first", body = ErrorBody),
    ),
)]
pub(crate) async fn remove_gate(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath((lot, gate)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    let gate = GateId::parse(&gate).map_err(|_| ApiError::NotFound("gate"))?;
    match crate::store::provision::remove_gate(&state.db, &lot.id, &gate).await? {
        GateRemoval::Removed => {}
        GateRemoval::NotFound => return Err(ApiError::NotFound("gate")),
        GateRemoval::HasDevice => {
            return Err(ApiError::conflict(
                "gate_has_device",
                "a camera is registered to this gate: revoke it first",
            ));
        }
    }
    state.registry.reload(&state.db).await?;
    Ok(StatusCode::NO_CONTENT)
}
