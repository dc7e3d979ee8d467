//! Brokers that ask the platform who may connect and what they may do (issue 13): EMQX's HTTP
//! authentication and authorization, and VerneMQ's webhooks (`auth_on_register`,
//! `auth_on_publish`, `auth_on_subscribe` and their `_m5` forms). The rules are
//! [`crate::registry::access`]'s; this module only speaks each broker's shapes.
//!
//! - EMQX: `POST /v1/broker/authenticate` with the body
//!   `{"clientid":"${clientid}","username":"${username}","password":"${password}"}` answers
//!   `{"result":"allow"|"deny","is_superuser":false}`; `POST /v1/broker/authorize` with
//!   `{"clientid":"${clientid}","username":"${username}","topic":"${topic}","action":"${action}","retain":"${retain}"}`
//!   answers `{"result":"allow"|"deny"}`.
//! - VerneMQ (recognised by its `vernemq-hook` header): the hooks' own bodies; answers
//!   `{"result":"ok"}` or `{"result":{"error":"not_allowed"}}`, and for a subscription with
//!   some filters refused, those filters with QoS 128 (135 under MQTT 5).
//!
//! The endpoints exist only when the platform runs with `--broker-hook-key`; the broker sends
//! it as `Authorization: Bearer <key>` (EMQX's request headers) or as the password of the
//! endpoint URL's user info (VerneMQ: `http://broker:<key>@host/…`, sent as HTTP Basic).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::constant_time_eq;
use crate::registry::access::{self, Access, PlatformLogin};

/// What the broker hooks need: their key, and the platform's own broker login.
#[derive(Debug, Clone)]
pub(crate) struct BrokerHook {
    pub key: SecretString,
    pub platform: Option<PlatformLogin>,
}

/// The hook configuration, once the caller has shown the key.
fn checked<'s>(state: &'s AppState, headers: &HeaderMap) -> Result<&'s BrokerHook, ApiError> {
    if !headers.contains_key(AUTHORIZATION) {
        return Err(ApiError::Unauthorized);
    }
    let hook = state
        .broker_hook
        .as_deref()
        .ok_or(ApiError::NotFound("route"))?;
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            if let Some(bearer) = value.strip_prefix("Bearer ") {
                return Some(bearer.as_bytes().to_vec());
            }
            let basic = value.strip_prefix("Basic ")?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic)
                .ok()?;
            let colon = decoded.iter().position(|&b| b == b':')?;
            Some(decoded[colon + 1..].to_vec())
        });
    match presented {
        Some(key) if constant_time_eq(&key, hook.key.expose_secret().as_bytes()) => Ok(hook),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The VerneMQ hook that called, if VerneMQ called.
fn vernemq_hook(headers: &HeaderMap) -> Option<&str> {
    headers.get("vernemq-hook").and_then(|v| v.to_str().ok())
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// VerneMQ's answer.
fn vernemq(allowed: bool) -> Json<Value> {
    if allowed {
        Json(json!({ "result": "ok" }))
    } else {
        Json(json!({ "result": { "error": "not_allowed" } }))
    }
}

/// EMQX's answer.
fn emqx(allowed: bool) -> Json<Value> {
    Json(json!({ "result": if allowed { "allow" } else { "deny" } }))
}

#[derive(Deserialize)]
struct EmqxLogin {
    clientid: String,
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct VernemqRegister {
    client_id: String,
    username: Option<String>,
    password: Option<String>,
}

/// `POST /v1/broker/authenticate`: may this client connect?
#[utoipa::path(
    post, path = "/v1/broker/authenticate", tag = "broker",
    security(("broker_key" = [])),
    request_body(content = serde_json::Value, description = "EMQX's HTTP authentication request (`clientid`, `username`, `password`) or VerneMQ's `auth_on_register(_m5)` webhook"),
    responses(
        (status = 200, description = "The broker's answer: EMQX `{\"result\":\"allow\"|\"deny\"}`, VerneMQ `{\"result\":\"ok\"}` or `{\"result\":{\"error\":\"not_allowed\"}}`", body = serde_json::Value),
        (status = 401, description = "Not the broker: no or another hook key", body = super::error::ErrorBody),
        (status = 404, description = "The platform runs without broker hooks (`--broker-hook-key`)", body = super::error::ErrorBody),
    ),
)]
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let hook = checked(&state, &headers)?;
    let registry = state.registry.snapshot();
    let log_in = |client_id: String, username: String, password: String| {
        let (db, platform) = (state.db.clone(), hook.platform.clone());
        let registry = registry.clone();
        async move {
            access::may_log_in(
                &registry,
                &db,
                platform.as_ref(),
                &client_id,
                &username,
                &password,
            )
            .await
        }
    };
    match vernemq_hook(&headers) {
        Some(_) => {
            let register: VernemqRegister = body(&bytes)?;
            let (Some(username), Some(password)) = (register.username, register.password) else {
                return Ok(vernemq(false));
            };
            Ok(vernemq(
                log_in(register.client_id, username, password).await,
            ))
        }
        None => {
            let login: EmqxLogin = body(&bytes)?;
            let allowed = log_in(login.clientid, login.username, login.password).await;
            Ok(Json(json!({
                "result": if allowed { "allow" } else { "deny" },
                "is_superuser": false,
            })))
        }
    }
}

/// EMQX's `${retain}` arrives as `"true"`/`"false"` in a JSON template, or as a boolean.
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    Ok(match Flag::deserialize(deserializer)? {
        Flag::Bool(flag) => flag,
        Flag::Text(text) => text == "true",
    })
}

#[derive(Deserialize)]
struct EmqxAction {
    clientid: String,
    username: String,
    topic: String,
    action: String,
    #[serde(default, deserialize_with = "flag")]
    retain: bool,
}

#[derive(Deserialize)]
struct VernemqPublish {
    client_id: String,
    username: Option<String>,
    topic: String,
    #[serde(default)]
    retain: bool,
}

#[derive(Deserialize)]
struct VernemqFilter {
    topic: String,
    qos: u8,
}

#[derive(Deserialize)]
struct VernemqSubscribe {
    client_id: String,
    username: Option<String>,
    topics: Vec<VernemqFilter>,
}

/// `POST /v1/broker/authorize`: may this client publish or subscribe to this topic?
#[utoipa::path(
    post, path = "/v1/broker/authorize", tag = "broker",
    security(("broker_key" = [])),
    request_body(content = serde_json::Value, description = "EMQX's HTTP authorization request (`clientid`, `username`, `topic`, `action`, `retain`) or VerneMQ's `auth_on_publish(_m5)` / `auth_on_subscribe(_m5)` webhook"),
    responses(
        (status = 200, description = "The broker's answer: EMQX `{\"result\":\"allow\"|\"deny\"}`, VerneMQ `{\"result\":\"ok\"}` (refused filters with QoS 128, or 135 under MQTT 5) or `{\"result\":{\"error\":\"not_allowed\"}}`", body = serde_json::Value),
        (status = 401, description = "Not the broker: no or another hook key", body = super::error::ErrorBody),
        (status = 404, description = "The platform runs without broker hooks (`--broker-hook-key`)", body = super::error::ErrorBody),
    ),
)]
pub(crate) async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let hook = checked(&state, &headers)?;
    let registry = state.registry.snapshot();
    let client = |client_id: &str, username: &str| {
        access::client(&registry, hook.platform.as_ref(), client_id, username)
    };
    match vernemq_hook(&headers) {
        Some(name) if name.starts_with("auth_on_subscribe") => {
            let request: VernemqSubscribe = body(&bytes)?;
            let who = client(
                &request.client_id,
                request.username.as_deref().unwrap_or(""),
            );
            let refused_qos = if name.ends_with("_m5") { 135 } else { 128 };
            let topics: Vec<(String, u8, bool)> = request
                .topics
                .into_iter()
                .map(|filter| {
                    let allowed = who
                        .as_ref()
                        .is_some_and(|who| access::allows(who, Access::Subscribe, &filter.topic));
                    (filter.topic, filter.qos, allowed)
                })
                .collect();
            if topics.iter().all(|(_, _, allowed)| *allowed) {
                return Ok(vernemq(true));
            }
            let rewritten: Vec<Value> = topics
                .into_iter()
                .map(|(topic, qos, allowed)| {
                    json!({ "topic": topic, "qos": if allowed { qos } else { refused_qos } })
                })
                .collect();
            Ok(Json(if name.ends_with("_m5") {
                json!({ "result": "ok", "modifiers": { "topics": rewritten } })
            } else {
                json!({ "result": "ok", "topics": rewritten })
            }))
        }
        Some(_) => {
            let request: VernemqPublish = body(&bytes)?;
            let who = client(
                &request.client_id,
                request.username.as_deref().unwrap_or(""),
            );
            let access = Access::Publish {
                retain: request.retain,
            };
            Ok(vernemq(who.is_some_and(|who| {
                access::allows(&who, access, &request.topic)
            })))
        }
        None => {
            let request: EmqxAction = body(&bytes)?;
            let access = match request.action.as_str() {
                "publish" => Access::Publish {
                    retain: request.retain,
                },
                "subscribe" => Access::Subscribe,
                _ => return Ok(emqx(false)),
            };
            let who = client(&request.clientid, &request.username);
            Ok(emqx(who.is_some_and(|who| {
                access::allows(&who, access, &request.topic)
            })))
        }
    }
}
