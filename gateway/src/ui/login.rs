//! Logging in to the web pages with an API key. The browser keeps a random token in a cookie
//! (`__Host-`, `HttpOnly`, `Secure`, `SameSite=Strict`); `store::web_sessions` keeps its hash
//! with the hash of the key. Every request resolves that key again through `http::auth`, so
//! roles and operator scoping are exactly the API's, and a revoked key is logged out at once.
//!
//! Forms are protected twice: the cookie is never sent with another site's request
//! (`SameSite=Strict`), a POST whose `Origin` is another site is refused, and every form carries
//! the session's CSRF token, checked by [`CsrfForm`] before the handler runs.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::text::{Lang, Text};
use super::{message_page, page, respond};
use crate::http::AppState;
use crate::http::auth::{Caller, constant_time_eq, identify_hash};
use crate::store::web_sessions;

/// The session cookie. `__Host-`: the browser takes it only from this host, over HTTPS (or
/// localhost), for the whole site, so no sibling site can plant one of its own.
const COOKIE: &str = "__Host-pf_session";
/// The language a person chose with the switch.
const LANG_COOKIE: &str = "pf_lang";

/// The login a request's cookie names, its key resolved once (put in the request by
/// [`web_login`]; `http::auth` answers from it for the rest of the request).
#[derive(Debug, Clone)]
pub(crate) struct WebLogin {
    pub csrf: String,
    pub caller: Caller,
    /// The key's id, for the audit (`None` for the configured platform admin key).
    pub key: Option<uuid::Uuid>,
}

/// The value of cookie `name`, if sent once (a request carrying two is trusted with neither).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .map(|c| c.value().to_owned());
    let first = values.next();
    values.next().is_none().then_some(first).flatten()
}

/// The `lang` of a query, if given.
fn query_lang(parts: &Parts) -> Option<String> {
    parts.uri.query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "lang")
            .map(|(_, v)| v)
    })
}

/// The page's language: `?lang=`, else the one chosen before, else the browser's.
pub(crate) fn lang_of(parts: &Parts) -> Lang {
    let chosen = query_lang(parts).or_else(|| cookie(&parts.headers, LANG_COOKIE));
    super::lang_of(chosen.as_deref(), &parts.headers)
}

/// Whether a POST comes from another site (its `Origin` names another host than this one).
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin == "null" || origin_host != host
}

/// Puts the login the cookie names into the request, refuses cross-site POSTs, and keeps a
/// language chosen with `?lang=`.
pub(crate) async fn web_login(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let lang = lang_of(&parts);
    if parts.method == Method::POST && cross_site(&parts.headers) {
        return message_page(
            StatusCode::FORBIDDEN,
            lang,
            Text::of(lang).refused,
            Text::of(lang).cross_site,
        );
    }
    if let Some(token) = cookie(&parts.headers, COOKIE) {
        let found = match web_sessions::find(&state.db, &token, Utc::now()).await {
            Ok(Some(session)) => identify_hash(&state, &session.key_hash)
                .await
                .map(|who| who.map(|(caller, key)| (session.csrf, caller, key)))
                .map_err(|error| error.to_string()),
            Ok(None) => Ok(None),
            Err(error) => Err(error.to_string()),
        };
        match found {
            // A key revoked since: no login.
            Ok(Some((csrf, caller, key))) => {
                parts.extensions.insert(WebLogin { csrf, caller, key });
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "web session lookup failed");
                return message_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    lang,
                    Text::of(lang).refused,
                    Text::of(lang).try_again,
                );
            }
        }
    }
    let chosen = query_lang(&parts).is_some();
    request = Request::from_parts(parts, body);
    let mut response = pages_only(lang, next.run(request).await).await;
    if chosen {
        let value = format!(
            "{LANG_COOKIE}={}; Path=/ui; SameSite=Lax; Max-Age=31536000",
            lang.code()
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// A person logged in to the web pages: who they are (as the API would resolve their key), the
/// forms' CSRF token and their language. Without a login the
/// page answers with the login form's address.
pub(crate) struct LoggedIn {
    pub caller: Caller,
    pub csrf: String,
    pub lang: Lang,
}

impl FromRequestParts<AppState> for LoggedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Response> {
        let lang = lang_of(parts);
        let Some(login) = parts.extensions.get::<WebLogin>().cloned() else {
            return Err(Redirect::to("/ui/login").into_response());
        };
        Ok(Self {
            caller: login.caller,
            csrf: login.csrf,
            lang,
        })
    }
}

/// A form posted from one of this session's pages: its fields as `T` (empty fields left out),
/// once its CSRF token is the session's.
pub(crate) struct CsrfForm<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let lang = lang_of(&parts);
        let text = Text::of(lang);
        let login = parts.extensions.get::<WebLogin>().cloned();
        let bytes = axum::body::Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(login) = login else {
            return Err(Redirect::to("/ui/login").into_response());
        };
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            message_page(StatusCode::BAD_REQUEST, lang, text.refused, &e.to_string())
        })?;
        let token = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        if !constant_time_eq(token.as_bytes(), login.csrf.as_bytes()) {
            return Err(message_page(
                StatusCode::FORBIDDEN,
                lang,
                text.refused,
                text.form_expired,
            ));
        }
        let rest: Vec<(String, String)> = fields
            .into_iter()
            .filter(|(k, v)| k != "csrf" && !v.trim().is_empty())
            .collect();
        let encoded = serde_urlencoded::to_string(&rest).unwrap_or_default();
        serde_urlencoded::from_str(&encoded)
            .map(CsrfForm)
            .map_err(|e| {
                message_page(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    lang,
                    text.refused,
                    &e.to_string(),
                )
            })
    }
}

/// `GET /ui/login`
pub(crate) async fn form(request: Request) -> Response {
    let lang = lang_of(&request.into_parts().0);
    login_page(StatusCode::OK, lang, None)
}

fn login_page(status: StatusCode, lang: Lang, error: Option<&str>) -> Response {
    let t = Text::of(lang);
    respond(
        status,
        page(
            lang,
            t.login_title,
            "/ui/login",
            html! {
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/ui/login" {
                    label for="key" { (t.key_label) }
                    input #key type="password" name="key" autocomplete="current-password" required;
                    p.note { (t.key_hint) }
                    button type="submit" { (t.login_button) }
                }
                p { a href="/ui/driver/enrol" { (t.enrol_link) } }
            },
        ),
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    key: String,
}

/// `POST /ui/login`: with a staff key, the console; with a driver's, their portal.
pub(crate) async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(login): axum::Form<LoginForm>,
) -> Response {
    let lang = super::lang_of(cookie(&headers, LANG_COOKIE).as_deref(), &headers);
    let t = Text::of(lang);
    let key = login.key.trim();
    let caller = match identify_hash(&state, &crate::registry::password_hash(key)).await {
        Ok(caller) => caller.map(|(caller, _)| caller),
        Err(error) => return super::api_error_page(lang, error),
    };
    let home = match caller {
        Some(Caller::PlatformAdmin | Caller::OperatorAdmin(_) | Caller::OperatorViewer(_)) => {
            "/ui/console"
        }
        Some(Caller::Driver(_)) => "/ui/driver",
        Some(Caller::NavigationApp) => {
            return login_page(StatusCode::FORBIDDEN, lang, Some(t.app_key));
        }
        None => return login_page(StatusCode::UNAUTHORIZED, lang, Some(t.bad_key)),
    };
    let replacing = cookie(&headers, COOKIE);
    match web_sessions::open(&state.db, key, replacing.as_deref(), Utc::now()).await {
        Ok(token) => logged_in(home, &token),
        Err(error) => super::api_error_page(lang, error.into()),
    }
}

/// Where a login goes, with its cookie.
pub(crate) fn logged_in(home: &str, token: &str) -> Response {
    let mut response = Redirect::to(home).into_response();
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        web_sessions::LASTS.num_seconds()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Deserialize)]
pub(crate) struct Nothing {}

/// `POST /ui/logout`
pub(crate) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    CsrfForm(Nothing {}): CsrfForm<Nothing>,
) -> Response {
    if let Some(token) = cookie(&headers, COOKIE)
        && let Err(error) = web_sessions::close(&state.db, &token).await
    {
        tracing::warn!(%error, "logging out failed");
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-pf_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// What the login pages answer is a page with the pages' headers: a refusal of the framework's
/// own (a path or query that does not parse, a wrong method), plain text echoing the input, is
/// answered as an error page instead; nothing is kept by a cache.
async fn pages_only(lang: Lang, response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    let mut response = if plain && response.status().is_client_error() {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap_or_default();
        message_page(
            status,
            lang,
            Text::of(lang).refused,
            &String::from_utf8_lossy(&body),
        )
    } else {
        response
    };
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
