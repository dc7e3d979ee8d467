//! An operator's devices: registered with credentials shown once, listed, rotated, revoked. Every
//! change reloads the registry, so the broker's logins and ingest's signature checks follow at
//! once: a revoked or rotated-away device can neither log in again nor be heard.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use parkflow_protocol::{BayId, DeviceId, GateId, LotId};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Scope, Staff, StaffAdmin};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use crate::anpr::Vendor;
use crate::registry::{
    DeviceKind, PLATFORM_CLIENT_PREFIX, is_platform_client_id, mqtt_password, random_device_key,
    random_secret,
};
use crate::store::devices::{self, DeviceError, DeviceView, NewDevice};

/// The most devices one listing returns.
const MAX_LIST: u32 = 10_000;

impl From<DeviceError> for ApiError {
    fn from(error: DeviceError) -> Self {
        match error {
            DeviceError::Exists => Self::conflict("device_exists", error.to_string()),
            DeviceError::GateTaken => Self::conflict("gate_has_camera", error.to_string()),
            DeviceError::UnknownGate => Self::bad_request("unknown_gate", error.to_string()),
            DeviceError::Store(e) => Self::Store(e),
        }
    }
}

/// Holding an ANPR camera's control password, it is not `Debug`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "cam-westlake-in-1", "kind": "gate_camera", "gate": "in-1"}))]
pub(crate) struct DeviceRequest {
    id: String,
    kind: RequestKind,
    /// A gate camera's gate.
    gate: Option<String>,
    /// A bay sensor's or bay camera's bay.
    bay: Option<String>,
    /// An `anpr_http` camera's vendor.
    #[serde(default)]
    vendor: Option<Vendor>,
    /// How an `anpr_http` camera's barrier opens.
    #[serde(default)]
    control: Option<ControlRequest>,
    /// Networks an `anpr_http` camera may send from (CIDRs; any when absent).
    #[serde(default)]
    allow_from: Vec<String>,
}

/// What is registered: a device of the MQTT protocol, or an off-the-shelf ANPR camera that
/// pushes its vendor's HTTP events (`POST /v1/anpr/{device}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RequestKind {
    GateCamera,
    BaySensor,
    BayCamera,
    Bridge,
    AnprHttp,
}

impl RequestKind {
    /// What it is in the registry: an ANPR camera is its gate's camera.
    fn device_kind(self) -> DeviceKind {
        match self {
            Self::GateCamera | Self::AnprHttp => DeviceKind::GateCamera,
            Self::BaySensor => DeviceKind::BaySensor,
            Self::BayCamera => DeviceKind::BayCamera,
            Self::Bridge => DeviceKind::Bridge,
        }
    }
}

/// How an ANPR camera's barrier opens: the vendor's HTTP call at `url` (Hikvision ISAPI
/// barrier-gate control, Dahua's `openStrobe`, else a generic relay receiving the decision as
/// JSON), or a ParkFlow MQTT barrier controller on the gate's `command` topic. Holding a
/// password, not `Debug`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ControlRequest {
    Http {
        url: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    },
    Mqtt,
}

/// A device with the credentials it connects and signs with: shown only in this answer (and,
/// holding them, not `Debug`: it is never printed).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Credentials {
    #[serde(flatten)]
    pub device: DeviceView,
    pub mqtt_password: String,
    /// The HMAC key of its JWS signatures (SPEC §2).
    pub secret: String,
}

/// The lot `raw` names, if the caller's scope sees it.
fn own_lot(state: &AppState, scope: &Scope, raw: &str) -> Result<LotId, ApiError> {
    Ok(scope.lot(&state.registry.snapshot(), raw)?.id.clone())
}

/// The device `raw` names, if its lot is the caller's.
async fn own_device(state: &AppState, scope: &Scope, raw: &str) -> Result<DeviceId, ApiError> {
    let id = DeviceId::parse(raw).map_err(|_| ApiError::NotFound("device"))?;
    let device = devices::device(&state.db, &id)
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    let lot = device
        .lot_id
        .as_deref()
        .ok_or(ApiError::NotFound("device"))?;
    // Another operator's device answers as one that does not exist.
    own_lot(state, scope, lot).map_err(|_| ApiError::NotFound("device"))?;
    Ok(id)
}

async fn reload(state: &AppState) -> Result<(), ApiError> {
    state.registry.reload(&state.db).await?;
    Ok(())
}

/// Gives the broker's permission lists (`--broker-acl`) the device as it is now. The
/// credentials were stored and are shown either way: a broker that cannot be told now is told by
/// the next reconciliation (within a minute).
async fn put_in_broker(state: &AppState, id: &DeviceId) {
    let Some(acl) = &state.broker_acl else {
        return;
    };
    let result = match crate::store::registry::broker_device(&state.db, id).await {
        Ok(Some(device)) => acl.put(&device).await,
        Ok(None) => Ok(()),
        Err(error) => Err(error.into()),
    };
    if let Err(error) = result {
        tracing::warn!(device = %id, error = %error, "the broker could not be given the device's permissions yet; the next reconciliation retries");
    }
}

/// Closes the device's broker connection where the broker would leave it open (no permission
/// lists kept there): the registry refuses its reconnection. A broker that cannot be reached
/// now leaves it connected until it reconnects (said in the log).
async fn disconnect(state: &AppState, id: &DeviceId) {
    let Some(kicker) = &state.kicker else {
        return;
    };
    if let Err(error) = kicker.disconnect(id.as_str()).await {
        tracing::warn!(device = %id, %error, "a device whose credentials changed could not be disconnected");
    }
}

/// An `anpr_http` camera's settings, checked; `None` for other kinds (which may not give them).
fn anpr_settings(
    request: &DeviceRequest,
    destinations: crate::anpr::barrier::Destinations,
) -> Result<Option<devices::NewAnpr>, ApiError> {
    let given =
        request.vendor.is_some() || request.control.is_some() || !request.allow_from.is_empty();
    if request.kind != RequestKind::AnprHttp {
        return if given {
            Err(ApiError::bad_request(
                "invalid_anpr",
                "vendor, control and allow_from are an anpr_http camera's",
            ))
        } else {
            Ok(None)
        };
    }
    let vendor = request.vendor.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_anpr",
            "an anpr_http camera names its vendor: hikvision, dahua, axis, platerecognizer or openalpr",
        )
    })?;
    let control = match &request.control {
        None | Some(ControlRequest::Mqtt) => None,
        Some(ControlRequest::Http {
            url,
            username,
            password,
        }) => {
            let url = url::Url::parse(url)
                .map_err(|e| ApiError::bad_request("invalid_anpr", format!("control.url: {e}")))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(ApiError::bad_request(
                    "invalid_anpr",
                    "control.url carries no credentials: give username and password",
                ));
            }
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ApiError::bad_request(
                    "invalid_anpr",
                    "control.url is an http or https address",
                ));
            }
            if let Some(refused) = destinations.refuses(&url) {
                return Err(ApiError::bad_request("invalid_anpr", refused));
            }
            Some(crate::anpr::barrier::HttpControl {
                vendor,
                url: url.to_string(),
                username: username.clone(),
                password: password.clone().map(Into::into),
            })
        }
    };
    let allow_from = request
        .allow_from
        .iter()
        .map(|net| {
            net.parse::<ipnet::IpNet>().map_err(|_| {
                ApiError::bad_request("invalid_anpr", format!("allow_from: {net:?} is not a CIDR"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(devices::NewAnpr {
        vendor,
        control,
        allow_from,
    }))
}

/// A new device key and the MQTT password derived from it.
fn credentials(kind: DeviceKind) -> (String, String) {
    let secret = match kind {
        // Bay devices' keys are 16 bytes, which the registry keeps packed.
        DeviceKind::BaySensor | DeviceKind::BayCamera => random_device_key(),
        DeviceKind::GateCamera | DeviceKind::Bridge => random_secret(),
    };
    (mqtt_password(&secret), secret)
}

/// `POST /v1/lots/{lot}/devices`
#[utoipa::path(
    post, path = "/v1/lots/{lot}/devices", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    request_body = DeviceRequest,
    responses(
        (status = 201, description = "Registered: the credentials are shown this once", body = Credentials),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists", body = ErrorBody),
    ),
)]
pub(crate) async fn register(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
    ApiJson(request): ApiJson<DeviceRequest>,
) -> Result<(StatusCode, Json<Credentials>), ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    let id = DeviceId::parse(&request.id)
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    if is_platform_client_id(id.as_str()) {
        return Err(ApiError::bad_request(
            "reserved_id",
            format!("device ids beginning with {PLATFORM_CLIENT_PREFIX:?} are the platform's own"),
        ));
    }
    let registry = state.registry.snapshot();
    let lot_idx = registry.lot_by_id(&lot).map(|l| l.idx);
    let anpr = anpr_settings(&request, state.relay.destinations)?;
    let kind = request.kind.device_kind();
    let (gate, bay) = match (kind, request.gate, request.bay) {
        (DeviceKind::GateCamera, Some(gate), None) => {
            let gate = GateId::parse(&gate)
                .map_err(|e| ApiError::bad_request("invalid_gate", e.to_string()))?;
            if lot_idx.and_then(|idx| registry.gate(idx, &gate)).is_none() {
                return Err(ApiError::bad_request(
                    "unknown_gate",
                    "the lot has no such gate",
                ));
            }
            (Some(gate), None)
        }
        (DeviceKind::BaySensor | DeviceKind::BayCamera, None, Some(bay)) => {
            let bay = BayId::parse(&bay)
                .map_err(|e| ApiError::bad_request("invalid_bay", e.to_string()))?;
            let known =
                lot_idx.is_some_and(|idx| registry.bays().find(idx, bay.as_str()).is_some());
            if !known {
                return Err(ApiError::bad_request(
                    "unknown_bay",
                    "the lot has no such bay",
                ));
            }
            (None, Some(bay))
        }
        (DeviceKind::Bridge, None, None) => (None, None),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_placement",
                "a gate camera names its gate, a bay sensor or camera its bay, a bridge neither",
            ));
        }
    };
    let (password, secret) = credentials(kind);
    devices::register(
        &state.db,
        &NewDevice {
            id: &id,
            kind,
            lot: &lot,
            gate: gate.as_ref(),
            bay: bay.as_ref(),
            password: &password,
            secret: &secret,
            anpr: anpr.as_ref(),
        },
        Utc::now(),
    )
    .await?;
    reload(&state).await?;
    put_in_broker(&state, &id).await;
    let device = devices::device(&state.db, &id)
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    Ok((
        StatusCode::CREATED,
        Json(Credentials {
            device,
            mqtt_password: password,
            secret,
        }),
    ))
}

/// `GET /v1/lots/{lot}/devices`
#[utoipa::path(
    get, path = "/v1/lots/{lot}/devices", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "The lot's devices (never their secrets)", body = [DeviceView]),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    Ok(Json(devices::of_lot(&state.db, &lot, MAX_LIST).await?))
}

/// A lane of a lot: its gate, its camera, and (for an off-the-shelf camera opening its barrier
/// over HTTP) the last barrier call and how it went.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LaneView {
    gate: String,
    camera: Option<String>,
    vendor: Option<Vendor>,
    last_barrier_call: Option<crate::anpr::barrier::CallOutcome>,
}

/// `GET /v1/lots/{lot}/lanes`
#[utoipa::path(
    get, path = "/v1/lots/{lot}/lanes", tag = "operators",
    security(("api_key" = [])),
    params(("lot" = String, Path, description = "Lot id")),
    responses(
        (status = 200, description = "The lot's lanes, with each off-the-shelf camera's last barrier call (a failed one shows `ok: false` and why)", body = [LaneView]),
        (status = 404, description = "No such lot (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn lanes(
    Staff(scope): Staff,
    State(state): State<AppState>,
    ApiPath(lot): ApiPath<String>,
) -> Result<Json<Vec<LaneView>>, ApiError> {
    let lot = own_lot(&state, &scope, &lot)?;
    let registry = state.registry.snapshot();
    let lot = registry.lot_by_id(&lot).ok_or(ApiError::NotFound("lot"))?;
    let calls = state.relay.outcomes_of(&lot.id);
    let lanes = registry
        .gates()
        .filter(|gate| gate.lot == lot.idx)
        .map(|gate| {
            let camera = gate.camera.as_ref().and_then(|id| registry.device(id));
            LaneView {
                gate: gate.id.to_string(),
                camera: camera.map(|c| c.id.to_string()),
                vendor: camera.and_then(|c| c.anpr.as_ref()).map(|a| a.vendor),
                last_barrier_call: calls
                    .iter()
                    .find(|(g, _)| g == &gate.id)
                    .map(|(_, outcome)| outcome.clone()),
            }
        })
        .collect();
    Ok(Json(lanes))
}

/// `POST /v1/devices/{id}/rotate`: new credentials, shown once; the old ones stop working.
#[utoipa::path(
    post, path = "/v1/devices/{id}/rotate", tag = "operators",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "New credentials, shown this once; the old ones stop working", body = Credentials),
        (status = 404, description = "No such device (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn rotate(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Credentials>, ApiError> {
    let id = own_device(&state, &scope, &id).await?;
    let device = devices::device(&state.db, &id)
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    let kind = DeviceKind::parse(&device.kind)
        .or((device.kind == devices::ANPR_KIND).then_some(DeviceKind::GateCamera))
        .ok_or_else(|| ApiError::Store(crate::store::StoreError::Corrupt("device kind".into())))?;
    let (password, secret) = credentials(kind);
    if !devices::rotate(&state.db, &id, &password, &secret).await? {
        return Err(ApiError::conflict(
            "device_revoked",
            "a revoked device stays revoked",
        ));
    }
    reload(&state).await?;
    put_in_broker(&state, &id).await;
    // Connected with the old credentials, it is disconnected: it comes back with the new ones.
    disconnect(&state, &id).await;
    Ok(Json(Credentials {
        device,
        mqtt_password: password,
        secret,
    }))
}

/// `DELETE /v1/devices/{id}`: revoked at once (idempotent).
#[utoipa::path(
    delete, path = "/v1/devices/{id}", tag = "operators",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Revoked: the broker refuses the device from now on"),
        (status = 503, description = "Revoked in the registry, but the broker keeping permission lists (--broker-acl) could not be told yet: repeat the call", body = ErrorBody),
        (status = 404, description = "No such device (or not this caller's)", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke(
    StaffAdmin(scope): StaffAdmin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = own_device(&state, &scope, &id).await?;
    let device = devices::device(&state.db, &id)
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    devices::revoke(&state.db, &id, Utc::now()).await?;
    reload(&state).await?;
    // A revoked device that the broker still lets in is not revoked: say so (the call may be
    // repeated; the reconciliation also retries).
    if let Some(acl) = &state.broker_acl
        && let Err(error) = acl.delete(&device.mqtt_username, id.as_str()).await
    {
        tracing::error!(device = %id, error = %error, "a revoked device could not be removed from the broker");
        return Err(ApiError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "broker_unavailable",
            message: "revoked in the registry, but the broker could not be told yet: repeat the call (the platform also retries within a minute)".into(),
        });
    }
    disconnect(&state, &id).await;
    Ok(StatusCode::NO_CONTENT)
}
