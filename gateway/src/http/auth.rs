//! Who is calling (SPEC §5): the API key in `Authorization: Bearer …` resolved to a role, and the
//! extractors that say which roles an endpoint admits. This is the one place that decides it:
//!
//! | extractor      | admits                                              | scope               |
//! |----------------|-----------------------------------------------------|---------------------|
//! | [`Admin`]      | the platform admin                                   | everything          |
//! | [`Staff`]      | the platform admin, operator admins and viewers      | their operator's    |
//! | [`StaffAdmin`] | the platform admin and operator admins               | their operator's    |
//! | [`Accountable`]| as [`StaffAdmin`], with the key used, for the audit  | their operator's    |
//! | [`DriverKey`]  | drivers                                              | their own           |
//!
//! No key, or a key unknown or revoked, answers 401; a valid key of a role the endpoint does not
//! admit answers 403; another operator's object answers 404 (the handlers ask [`Scope::sees`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use parkflow_protocol::LotId;

use super::AppState;
use super::error::ApiError;
use crate::registry::{Lot, Registry};

/// A caller resolved from their key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    PlatformAdmin,
    OperatorAdmin(String),
    OperatorViewer(String),
    Driver(Uuid),
    NavigationApp,
}

/// What a staff caller may see: everything, or one operator's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Operator(String),
}

impl Scope {
    /// The operator to filter by; `None` for every operator.
    pub(crate) fn operator(&self) -> Option<&str> {
        match self {
            Self::All => None,
            Self::Operator(id) => Some(id),
        }
    }

    /// Whether an object of `operator` is visible (else it answers 404).
    pub(crate) fn sees(&self, operator: &str) -> bool {
        self.operator().is_none_or(|own| own == operator)
    }

    /// The lot `raw` names, if this scope sees it: an unknown lot and another operator's answer
    /// the same 404.
    pub(crate) fn lot<'r>(&self, registry: &'r Registry, raw: &str) -> Result<&'r Lot, ApiError> {
        LotId::parse(raw)
            .ok()
            .and_then(|id| registry.lot_by_id(&id))
            .filter(|lot| self.sees(&lot.operator_id))
            .ok_or(ApiError::NotFound("lot"))
    }
}

/// The key presented, if any.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|key| !key.is_empty())
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolves the caller from the request's key, with the id of the `api_keys` row it matched
/// (`None` for the configured platform admin key); `None` without a valid key.
async fn identify(
    parts: &Parts,
    state: &AppState,
) -> Result<Option<(Caller, Option<Uuid>)>, ApiError> {
    // A web page's request: the login its cookie named, its key resolved by `ui::login`.
    if let Some(login) = parts.extensions.get::<crate::ui::login::WebLogin>() {
        return Ok(Some((login.caller.clone(), login.key)));
    }
    let Some(key) = bearer(parts) else {
        return Ok(None);
    };
    identify_hash(state, &crate::registry::password_hash(key)).await
}

/// [`identify`] from the hash of the key presented.
pub(crate) async fn identify_hash(
    state: &AppState,
    key_hash: &str,
) -> Result<Option<(Caller, Option<Uuid>)>, ApiError> {
    if let Some(admin) = &state.admin_key_hash
        && constant_time_eq(key_hash.as_bytes(), admin.as_bytes())
    {
        return Ok(Some((Caller::PlatformAdmin, None)));
    }
    let Some(principal) = crate::store::keys::principal_by_hash(&state.db, key_hash).await? else {
        return Ok(None);
    };
    let caller = match (
        principal.role.as_str(),
        principal.operator_id,
        principal.driver_id,
    ) {
        ("platform_admin", _, _) => Caller::PlatformAdmin,
        ("operator_admin", Some(operator), _) => Caller::OperatorAdmin(operator),
        ("operator_viewer", Some(operator), _) => Caller::OperatorViewer(operator),
        ("driver", _, Some(driver)) => Caller::Driver(driver),
        ("navigation_app", _, _) => Caller::NavigationApp,
        _ => return Ok(None),
    };
    Ok(Some((caller, Some(principal.id))))
}

/// Resolves the caller from the request's key; `None` without a valid key.
pub(crate) async fn caller(parts: &Parts, state: &AppState) -> Result<Option<Caller>, ApiError> {
    Ok(identify(parts, state).await?.map(|(caller, _)| caller))
}

async fn require(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    caller(parts, state).await?.ok_or(ApiError::Unauthorized)
}

/// The platform admin.
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match require(parts, state).await? {
            Caller::PlatformAdmin => Ok(Self),
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// The platform admin or an operator's admin or viewer: reads, scoped.
pub(crate) struct Staff(pub Scope);

impl FromRequestParts<AppState> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match require(parts, state).await? {
            Caller::PlatformAdmin => Ok(Self(Scope::All)),
            Caller::OperatorAdmin(operator) | Caller::OperatorViewer(operator) => {
                Ok(Self(Scope::Operator(operator)))
            }
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// The platform admin or an operator's admin: writes, scoped.
pub(crate) struct StaffAdmin(pub Scope);

impl FromRequestParts<AppState> for StaffAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match require(parts, state).await? {
            Caller::PlatformAdmin => Ok(Self(Scope::All)),
            Caller::OperatorAdmin(operator) => Ok(Self(Scope::Operator(operator))),
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// The platform admin or an operator's admin, for actions that leave an audit trail: their scope,
/// their role and the key they used.
pub(crate) struct Accountable {
    pub scope: Scope,
    pub role: &'static str,
    /// `None` for the platform admin's configured key.
    pub key: Option<Uuid>,
}

impl Accountable {
    /// An audit entry of this caller's, now.
    pub(crate) fn entry(
        &self,
        operator: Option<&str>,
        action: &str,
        object: String,
        reason: String,
        details: Option<serde_json::Value>,
    ) -> crate::store::audit::AuditEntry {
        crate::store::audit::AuditEntry {
            id: uuid::Uuid::now_v7(),
            at: chrono::Utc::now(),
            actor_role: self.role.to_owned(),
            actor_key: self.key,
            operator_id: operator.map(str::to_owned),
            action: action.to_owned(),
            object,
            reason,
            details: details.map(|d| d.to_string()),
        }
    }
}

impl FromRequestParts<AppState> for Accountable {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (caller, key) = identify(parts, state)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        match caller {
            Caller::PlatformAdmin => Ok(Self {
                scope: Scope::All,
                role: "platform_admin",
                key,
            }),
            Caller::OperatorAdmin(operator) => Ok(Self {
                scope: Scope::Operator(operator),
                role: "operator_admin",
                key,
            }),
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// A driver: their id.
pub(crate) struct DriverKey(pub Uuid);

impl FromRequestParts<AppState> for DriverKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match require(parts, state).await? {
            Caller::Driver(driver) => Ok(Self(driver)),
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// A driver and the key they called with (to issue and revoke their own keys, audited).
pub(crate) struct DriverWithKey {
    pub driver: Uuid,
    pub key: Uuid,
}

impl FromRequestParts<AppState> for DriverWithKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match identify(parts, state).await? {
            Some((Caller::Driver(driver), Some(key))) => Ok(Self { driver, key }),
            Some(_) => Err(ApiError::Forbidden),
            None => Err(ApiError::Unauthorized),
        }
    }
}
