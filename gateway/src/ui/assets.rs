//! The pages' own files (scripts), built into the binary and served at
//! `/ui/assets/{name}.{hash}.{ext}`: the hash of the content is in the address, so a browser
//! keeps each one for a year and a new build's is a new address.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;

/// A file the pages load.
pub(crate) struct Asset {
    stem: &'static str,
    ext: &'static str,
    content_type: &'static str,
    pub body: &'static str,
    path: OnceLock<String>,
}

impl Asset {
    const fn new(
        stem: &'static str,
        ext: &'static str,
        content_type: &'static str,
        body: &'static str,
    ) -> Self {
        Self {
            stem,
            ext,
            content_type,
            body,
            path: OnceLock::new(),
        }
    }

    /// Its address, with the hash of its content.
    pub(crate) fn path(&self) -> &str {
        self.path.get_or_init(|| {
            let hash: String = sha2::Sha256::digest(self.body.as_bytes())[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("/ui/assets/{}.{hash}.{}", self.stem, self.ext)
        })
    }
}

/// The city view's live updates.
pub(crate) static CITY_JS: Asset = Asset::new(
    "city",
    "js",
    "text/javascript; charset=utf-8",
    include_str!("assets/city.js"),
);

const ALL: [&Asset; 1] = [&CITY_JS];

/// `GET /ui/assets/{file}`
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    let wanted = format!("/ui/assets/{file}");
    let Some(asset) = ALL.into_iter().find(|a| a.path() == wanted) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
