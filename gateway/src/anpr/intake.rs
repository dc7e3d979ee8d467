//! `POST /v1/anpr/{device}`: a camera's (or recognition service's) own plate event, in its
//! vendor's format, becomes the plate read the gate pipeline decides on — the same dedupe (the
//! vendor's event id), the same decisions and sessions as a signed MQTT read. Answered once the
//! read is on record, so a camera that sees no 200 sends it again and nothing is lost.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::Utc;
use parkflow_protocol::{DeviceId, Direction, EventId, Plate};
use serde::Serialize;

use super::vendors::{self, VendorRead};
use crate::gate::GateRead;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::registry::{GateDirection, password_hash};

/// Events being received at once, at most (each up to [`MAX_EVENT_BYTES`]).
pub(crate) const MAX_EVENTS_AT_ONCE: usize = 64;
/// The largest event accepted, pictures included.
pub(crate) const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// How long an event waits for its read to be on record before the camera is told to retry.
/// (Shorter than the API's request timeout, so the camera hears `not_recorded`, counted.)
const RECORDED_WITHIN: std::time::Duration = std::time::Duration::from_secs(8);

/// What the camera is told.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    /// The read's id: the vendor's event id, prefixed with the vendor.
    event_id: String,
}

/// A refusal: counted in `parkflow_events_rejected_total{reason}`, answered with `status` and
/// `code`.
struct Refused {
    status: StatusCode,
    reason: &'static str,
    code: &'static str,
    message: String,
}

impl Refused {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            code: reason,
            message: message.into(),
        }
    }

    /// Not this camera's credentials, or no such camera: answered alike (`401`), so that the
    /// answer says nothing of which device ids exist; counted under `reason`.
    fn unauthorised(reason: &'static str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason,
            code: "bad_credentials",
            message: "HTTP Basic or Digest with the camera's device id and password".into(),
        }
    }
}

/// `POST /v1/anpr/{device}`
#[utoipa::path(
    post, path = "/v1/anpr/{device}", tag = "devices",
    params(("device" = String, Path, description = "The camera's device id")),
    request_body(content = String, description = "The vendor's own event: Hikvision ISAPI XML (also inside multipart/form-data), Dahua, Axis, Plate Recognizer or OpenALPR JSON", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The read is on record (the same event again is the same read)", body = Accepted),
        (status = 400, description = "Not an event of the camera's vendor"),
        (status = 401, description = "Wrong or missing credentials, or no such ANPR camera (answered alike): HTTP Basic or Digest (MD5, realm `parkflow`) with the device id and its password"),
        (status = 403, description = "Not from an address the camera is allowed to send from"),
        (status = 413, description = "Larger than 4 MiB"),
        (status = 503, description = "Not on record in time: send it again"),
    ),
)]
pub(crate) async fn intake(
    State(state): State<AppState>,
    Path(device): Path<String>,
    parts: Parts,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let accepted = match body {
        Ok(body) => accept(&state, &device, &parts, &body).await,
        Err(rejection) => Err(Refused::new(
            rejection.status(),
            "oversized",
            format!("events are at most {MAX_EVENT_BYTES} bytes, pictures included"),
        )),
    };
    match accepted {
        Ok(accepted) => (StatusCode::OK, axum::Json(accepted)).into_response(),
        Err(refused) => {
            state.metrics.rejected(refused.reason);
            let mut response = ApiError::bad_request(refused.code, refused.message).into_response();
            *response.status_mut() = refused.status;
            if refused.status == StatusCode::UNAUTHORIZED {
                // Either: cameras answer the one they support.
                let headers = response.headers_mut();
                if let Ok(digest) = HeaderValue::from_str(&super::digest::challenge(Utc::now())) {
                    headers.append(header::WWW_AUTHENTICATE, digest);
                }
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"parkflow\""),
                );
            }
            response
        }
    }
}

async fn accept(
    state: &AppState,
    device: &str,
    parts: &Parts,
    body: &[u8],
) -> Result<Accepted, Refused> {
    let received_at = Utc::now();
    let received = std::time::Instant::now();
    let registry = state.registry.snapshot();
    let unknown = || Refused::unauthorised("unknown_device");
    let id = DeviceId::parse(device).map_err(|_| unknown())?;
    let camera = registry
        .device(&id)
        .filter(|d| !d.revoked)
        .ok_or_else(unknown)?;
    let anpr = camera.anpr.clone().ok_or_else(unknown)?;
    // The address first: a refusal for it says nothing of whether the credentials were right.
    if !anpr.allow_from.is_empty() {
        // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`; the list names them as IPv4.
        let from = state.trusted_proxies.client(parts).to_canonical();
        if !anpr.allow_from.iter().any(|net| net.contains(&from)) {
            return Err(Refused::new(
                StatusCode::FORBIDDEN,
                "address_not_allowed",
                "this camera does not send from this address",
            ));
        }
    }
    let digest_ok = || {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())?;
        let ha1 = anpr.digest_ha1.as_ref()?;
        let uri = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str());
        let request = super::digest::Request {
            method: parts.method.as_str(),
            uri,
        };
        Some(super::digest::verify(
            header,
            &request,
            device,
            secrecy::ExposeSecret::expose_secret(ha1),
            received_at,
        ))
    };
    if !authorised(&parts.headers, device, &camera.mqtt_password_hash) && digest_ok() != Some(true)
    {
        return Err(Refused::unauthorised("bad_credentials"));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let read: VendorRead = vendors::parse(anpr.vendor, content_type, body)
        .map_err(|error| Refused::new(StatusCode::BAD_REQUEST, "malformed", error.to_string()))?;
    let (Some(lot_id), Some(gate_id)) = (&camera.lot, &camera.gate) else {
        return Err(unknown());
    };
    let lot = registry.lot_by_id(lot_id).ok_or_else(unknown)?;
    let gate = registry.gate(lot.idx, gate_id).ok_or_else(unknown)?;
    let plate = Plate::parse(&read.plate)
        .map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "invalid_plate", "not a plate"))?;
    if !read.confidence.is_finite() {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "confidence is not a number",
        ));
    }
    let event_id = EventId::parse(&vendors::event_id(anpr.vendor, device, &read.event_id))
        .map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "malformed", "no usable event id"))?;
    let (ticket, recorded) = crate::mqtt::ack::Ticket::recorded();
    let gate_read = GateRead {
        lot: lot.id.clone(),
        gate: gate_id.clone(),
        event_id: event_id.clone(),
        plate,
        plate_color: read.plate_color,
        confidence: read.confidence,
        direction: match (gate.direction, read.direction) {
            (GateDirection::Entry, _) => Direction::Entry,
            (GateDirection::Exit, _) => Direction::Exit,
            (GateDirection::Both, Some(direction)) => direction,
            (GateDirection::Both, None) => {
                return Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "a lane both ways needs the event's direction",
                ));
            }
        },
        observed_at: read.observed_at.unwrap_or(received_at),
        received_at,
        received,
        ticket: Some(ticket),
    };
    state.metrics.plate_reads.inc();
    let clock_refused =
        parkflow_protocol::sign::check_observed_at(gate_read.observed_at, received_at).is_err();
    let on_record = match &state.node {
        // Another node runs the lot (a camera behind a load balancer reaches any node): that
        // node decides; this one answers once the read is on record in the shared database.
        Some((ownership, peers)) if !ownership.holds(lot.id.as_str()) => {
            state.metrics.anpr_forwarded.inc();
            peers
                .tell(crate::cluster::Notice::PlateRead(
                    crate::cluster::ForwardedRead::of(&gate_read, clock_refused),
                ))
                .await;
            drop(gate_read);
            recorded_elsewhere(state, lot.id.as_str(), event_id.as_str()).await
        }
        _ => {
            if clock_refused {
                state.gates.clock_refused(gate_read).await;
            } else {
                state.gates.plate_read(gate_read).await;
            }
            matches!(
                tokio::time::timeout(RECORDED_WITHIN, recorded).await,
                Ok(Ok(()))
            )
        }
    };
    if !on_record {
        return Err(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_recorded",
            "the read is not on record yet: send it again",
        ));
    }
    // Pictures only for a lot that keeps them, and only for a read that opened a review case
    // (on record now, with the read): a person looks at the car; other pictures are dropped.
    if lot.review_pictures {
        let pictures = vendors::pictures(content_type, body);
        if !pictures.is_empty() {
            crate::store::pictures::keep(
                &state.db,
                lot.id.as_str(),
                event_id.as_str(),
                &pictures,
                received_at,
            )
            .await
            .map_err(|error| {
                tracing::warn!(%error, device, "review pictures not kept; the camera sends again");
                Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_recorded",
                    "the read is on record, its pictures are not yet: send it again",
                )
            })?;
        }
    }
    Ok(Accepted {
        event_id: event_id.as_str().to_owned(),
    })
}

/// Whether the node that runs `lot` put the read `event_id` on record within
/// [`RECORDED_WITHIN`] (asked of the database the nodes share, every 50 ms).
async fn recorded_elsewhere(state: &AppState, lot: &str, event_id: &str) -> bool {
    let deadline = tokio::time::Instant::now() + RECORDED_WITHIN;
    loop {
        match crate::store::sessions::read_recorded(&state.db, lot, event_id).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "a forwarded read's record not looked up"),
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether `Authorization: Basic` names `device` with its password.
fn authorised(headers: &HeaderMap, device: &str, password_hash_stored: &str) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return false;
    };
    user == device
        && crate::http::auth::constant_time_eq(
            password_hash(password).as_bytes(),
            password_hash_stored.as_bytes(),
        )
}
