//! `/ui/`: the city view for a big screen or a phone — every lot and street zone on a map,
//! coloured by occupancy, the city's totals and its busiest and emptiest places, kept live by a
//! small script over the public availability stream. Counts only, as the public API shows them:
//! the page aggregates the board; it never ships bays.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use std::sync::Arc;

use super::text::{Lang, Text};
use crate::availability::Board;
use crate::http::AppState;
use crate::registry::LotKind;

/// Places listed as busiest and as emptiest.
const RANKED: usize = 8;
/// The map's drawing size (SVG user units); the page scales it to the screen.
const MAP_W: f64 = 1000.0;
const MAP_H: f64 = 620.0;

#[derive(Debug, Deserialize)]
pub(crate) struct CityQuery {
    /// `en` or `zh` (else the browser's `Accept-Language`).
    lang: Option<String>,
}

/// `GET /ui/`: rendered once per board and language, and gzipped once, then served as is to
/// every screen until the occupancy actor publishes the next board.
pub(crate) async fn page(
    State(state): State<AppState>,
    Query(query): Query<CityQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = super::lang_of(query.lang.as_deref(), &headers);
    let board = state.availability.board();
    let rendered = RENDERED.get(&board, lang);
    let gzip = headers
        .get(axum::http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response = super::respond_with_script(
        axum::http::StatusCode::OK,
        if gzip {
            rendered.gzip.clone()
        } else {
            rendered.html.clone()
        },
    );
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::VARY,
        axum::http::HeaderValue::from_static("accept-encoding, accept-language"),
    );
    if gzip {
        headers.insert(
            axum::http::header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
    }
    response
}

/// A page as rendered for one board, plain and gzipped.
struct Rendered {
    board: std::sync::Weak<Board>,
    html: bytes::Bytes,
    gzip: bytes::Bytes,
}

/// The latest page per language.
struct Cache(std::sync::Mutex<[Option<Arc<Rendered>>; 2]>);

static RENDERED: Cache = Cache(std::sync::Mutex::new([None, None]));

impl Cache {
    fn get(&self, board: &Arc<Board>, lang: Lang) -> Arc<Rendered> {
        let slot = usize::from(lang == Lang::Zh);
        let fresh = |r: &Arc<Rendered>| r.board.upgrade().is_some_and(|b| Arc::ptr_eq(&b, board));
        if let Some(rendered) = self.lock()[slot].as_ref().filter(|r| fresh(r)) {
            return rendered.clone();
        }
        // Rendered outside the lock: two screens asking at once may both render (the same page).
        let html = super::wide_page(
            lang,
            Text::of(lang).city_title,
            "/ui/",
            &[super::assets::CITY_JS.path()],
            render(board, Text::of(lang)),
        )
        .into_string();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let gzip = std::io::Write::write_all(&mut encoder, html.as_bytes())
            .and_then(|()| encoder.finish())
            .unwrap_or_default();
        let rendered = Arc::new(Rendered {
            board: Arc::downgrade(board),
            html: html.into(),
            gzip: gzip.into(),
        });
        self.lock()[slot] = Some(rendered.clone());
        rendered
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Arc<Rendered>>; 2]> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One lot or zone as the page draws it.
struct Place<'a> {
    id: &'a str,
    name: &'a str,
    street: bool,
    x: f64,
    y: f64,
    total: u32,
    free: u32,
    occupied: u32,
    unknown: u32,
}

impl Place<'_> {
    /// The share of its known spaces taken (`None`: nothing known).
    fn taken(&self) -> Option<f64> {
        let known = self.free + self.occupied;
        (known > 0).then(|| f64::from(self.occupied) / f64::from(known))
    }
}

/// The places of `board`, placed on the map (an equirectangular projection of the city's
/// bounding box, with a margin).
fn places(board: &Board) -> Vec<Place<'_>> {
    let lots = board.registry.lots();
    let (mut lat0, mut lat1, mut lon0, mut lon1) = (90.0_f64, -90.0_f64, 180.0_f64, -180.0_f64);
    for lot in lots {
        lat0 = lat0.min(lot.location.lat);
        lat1 = lat1.max(lot.location.lat);
        lon0 = lon0.min(lot.location.lon);
        lon1 = lon1.max(lot.location.lon);
    }
    // Keep the map's proportions: a degree of longitude is shorter by cos(latitude).
    let squeeze = ((lat0 + lat1) / 2.0).to_radians().cos().max(0.1);
    let (w, h) = (((lon1 - lon0) * squeeze).max(1e-4), (lat1 - lat0).max(1e-4));
    let scale = ((MAP_W - 40.0) / w).min((MAP_H - 40.0) / h);
    let (dx, dy) = ((MAP_W - w * scale) / 2.0, (MAP_H - h * scale) / 2.0);
    lots.iter()
        .filter_map(|lot| {
            let a = board.lots.get(lot.idx as usize)?;
            Some(Place {
                id: lot.id.as_str(),
                name: &lot.name,
                street: lot.kind == LotKind::OnStreet,
                x: dx + (lot.location.lon - lon0) * squeeze * scale,
                y: MAP_H - (dy + (lot.location.lat - lat0) * scale),
                total: a.counts.total,
                free: a.counts.free,
                occupied: a.counts.occupied,
                unknown: a.counts.unknown,
            })
        })
        .collect()
}

/// The colour of a share taken: green (empty) through amber to red (full); grey unknown.
pub(crate) fn colour(taken: Option<f64>) -> String {
    let Some(taken) = taken else {
        return "#aab7b8".into();
    };
    let taken = taken.clamp(0.0, 1.0);
    // Hue 130 (green) to 0 (red).
    format!("hsl({:.0},70%,45%)", 130.0 * (1.0 - taken))
}

fn render(board: &Board, text: &Text) -> Markup {
    let places = places(board);
    let sum = |f: fn(&Place<'_>) -> u32| places.iter().map(f).map(u64::from).sum::<u64>();
    let (total, free, occupied, unknown) = (
        sum(|p| p.total),
        sum(|p| p.free),
        sum(|p| p.occupied),
        sum(|p| p.unknown),
    );
    let mut ranked: Vec<&Place<'_>> = places.iter().filter(|p| p.taken().is_some()).collect();
    ranked.sort_by(|a, b| {
        b.taken()
            .partial_cmp(&a.taken())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.id.cmp(b.id))
    });
    let busiest = ranked.iter().take(RANKED);
    let emptiest = ranked.iter().rev().take(RANKED);
    // Areas by capacity, the largest as big as the city's density leaves room for.
    let largest = places.iter().map(|p| p.total).max().unwrap_or(1).max(1);
    let room = (MAP_W / (places.len().max(1) as f64).sqrt() / 2.5).clamp(3.0, 24.0);
    let radius = |p: &Place<'_>| (room * (f64::from(p.total) / f64::from(largest)).sqrt()).max(1.5);
    let percent = |p: &Place<'_>| p.taken().map_or(0.0, |t| t * 100.0);
    html! {
        section.totals #totals {
            div { span.figure #free { (free) } span.label { (text.free) } }
            div { span.figure #occupied { (occupied) } span.label { (text.occupied) } }
            div { span.figure #unknown { (unknown) } span.label { (text.unknown) } }
            div { span.figure #total { (total) } span.label { (text.spaces) } }
            div { span.figure { (places.len()) } span.label { (text.places) } }
        }
        div.city {
            figure.map {
                svg #map viewBox={ "0 0 " (MAP_W) " " (MAP_H) } role="img" aria-label=(text.map_label) {
                    rect x="0" y="0" width=(MAP_W) height=(MAP_H) fill="#e8edf1" {}
                    @for p in &places {
                        circle id={ "l-" (p.id) } class=(if p.street { "street" } else { "gated" })
                            cx=(format!("{:.1}", p.x)) cy=(format!("{:.1}", p.y))
                            r=(format!("{:.1}", radius(p)))
                            fill=(colour(p.taken()))
                            data-name=(p.name) data-total=(p.total) data-free=(p.free)
                            data-occupied=(p.occupied) data-unknown=(p.unknown) {
                            title { (p.name) " · " (p.free) " " (text.free) " / " (p.total) }
                        }
                    }
                }
                figcaption {
                    span.key style="background:hsl(130,70%,45%)" {} (text.empty) " "
                    span.key style="background:hsl(65,70%,45%)" {} " "
                    span.key style="background:hsl(0,70%,45%)" {} (text.full) " "
                    span.key style="background:#aab7b8" {} (text.unknown)
                    " · " (text.live) " " span #updated { "—" }
                }
            }
            aside {
                h2 { (text.busiest) }
                ol #busiest {
                    @for p in busiest {
                        li data-lot=(p.id) { span.name { (p.name) } " " span.pct { (format!("{:.0}%", percent(p))) } }
                    }
                }
                h2 { (text.emptiest) }
                ol #emptiest {
                    @for p in emptiest {
                        li data-lot=(p.id) { span.name { (p.name) } " " span.pct { (format!("{:.0}%", percent(p))) } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_green_to_red_and_grey_when_unknown() {
        assert_eq!(colour(Some(0.0)), "hsl(130,70%,45%)");
        assert_eq!(colour(Some(1.0)), "hsl(0,70%,45%)");
        assert_eq!(colour(None), "#aab7b8");
    }
}
