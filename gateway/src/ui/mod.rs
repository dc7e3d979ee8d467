//! The web pages people use, server-rendered by this binary with nothing fetched from elsewhere
//! (styles inline; a page's own script, when it has one, from [`assets`]): the pay page a held
//! car's `pay_url` opens in a phone's browser, and the city view (`/ui/`). Every string is in
//! [`text`], per language.

pub(crate) mod assets;
pub(crate) mod city;
pub(crate) mod console;
pub(crate) mod driver;
pub(crate) mod login;
pub(crate) mod pay;
pub(crate) mod text;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use text::{Lang, Text};

/// Small enough to inline: readable on a phone, and on a big screen.
const STYLE: &str = "
body{margin:0;font:17px/1.5 system-ui,-apple-system,'Segoe UI','PingFang SC','Noto Sans CJK SC',sans-serif;background:#f3f5f7;color:#17202a}
main{max-width:30rem;margin:0 auto;padding:1.25rem}
h1{font-size:1.5rem;margin:.5rem 0 1rem}
dl{display:grid;grid-template-columns:auto 1fr;gap:.4rem 1rem;background:#fff;border-radius:.75rem;padding:1rem;margin:0 0 1rem}
dt{color:#5d6d7e}dd{margin:0;font-weight:600}
.amount{font-size:1.6rem}
.note{color:#5d6d7e;font-size:.9rem}
form{display:grid;gap:.6rem}
label{font-weight:600}
input[type=text]{font-size:1.1rem;padding:.7rem;border:1px solid #aab7b8;border-radius:.5rem}
button,.button{font-size:1.15rem;padding:.9rem;border:0;border-radius:.5rem;background:#1e8449;color:#fff;text-align:center;text-decoration:none}
.error{background:#fdedec;color:#922b21;padding:.75rem;border-radius:.5rem}
.done{background:#e9f7ef;color:#145a32;padding:1rem;border-radius:.75rem;font-size:1.2rem}
code{font-size:1rem;word-break:break-all}
nav{text-align:right;font-size:.9rem}
main.wide{max-width:120rem}
.totals{display:flex;flex-wrap:wrap;gap:.75rem;margin:0 0 1rem}
.totals div{background:#fff;border-radius:.75rem;padding:.6rem 1rem;min-width:7rem}
.figure{display:block;font-size:1.8rem;font-weight:700;font-variant-numeric:tabular-nums}
.label{color:#5d6d7e;font-size:.9rem}
.city{display:grid;grid-template-columns:minmax(0,3fr) minmax(14rem,1fr);gap:1rem}
@media (max-width:48rem){.city{grid-template-columns:1fr}}
.map{margin:0;background:#fff;border-radius:.75rem;padding:.5rem}
.map svg{width:100%;height:auto;max-height:80vh;display:block}
.map circle{stroke:#fff;stroke-width:.6;fill-opacity:.85}
.map circle.street{stroke:#17202a;stroke-width:.3}
figcaption{font-size:.85rem;color:#5d6d7e;padding:.4rem}
.key{display:inline-block;width:.8rem;height:.8rem;border-radius:50%;vertical-align:middle}
aside{background:#fff;border-radius:.75rem;padding:.5rem 1rem}
aside h2{font-size:1.05rem;margin:.6rem 0 .3rem}
aside ol{margin:0;padding-left:1.4rem;font-size:.95rem}
.pct{font-weight:700;font-variant-numeric:tabular-nums}
h2{font-size:1.2rem;margin:1.4rem 0 .5rem}
h3{font-size:1.05rem;margin:.2rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:.75rem;overflow:hidden;font-size:.95rem}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #eaeded;vertical-align:top}
th{color:#5d6d7e;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
tr.trouble td{background:#fef5e7}
.consolenav{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;margin:0 0 1rem;padding:.5rem 1rem;background:#17202a;border-radius:.75rem}
.consolenav a{color:#fff;text-decoration:none;font-weight:600}
form.inline{display:inline-flex;flex-wrap:wrap;gap:.4rem;align-items:center;margin:.3rem .3rem 0 0}
form.inline button,form.search button,form.correction button{font-size:.95rem;padding:.45rem .8rem}
form.search{display:flex;gap:.5rem;grid-template-columns:none;margin:0 0 .75rem}
form.correction{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-top:.5rem}
input[type=search],input[type=password],select{font-size:1rem;padding:.5rem;border:1px solid #aab7b8;border-radius:.5rem}
form.inline input[type=text],form.correction input[type=text]{font-size:.95rem;padding:.4rem}
button.link{background:none;color:#fff;padding:0;font-size:1rem;text-decoration:underline}
button.danger{background:#922b21}
.lanes{display:grid;grid-template-columns:repeat(auto-fill,minmax(22rem,1fr));gap:.75rem}
.lanes section.lane{margin:0}
section.lane,section.case{background:#fff;border-radius:.75rem;padding:.75rem 1rem;margin:0 0 .75rem}
section.lane dl,section.case dl{padding:0;margin:0}
.chart{margin:0;background:#fff;border-radius:.75rem;padding:.5rem}
.chart svg{width:100%;height:auto;display:block}
.chart .occupancy{fill:none;stroke:#1e8449;stroke-width:2}
.chart .capacity{stroke:#922b21;stroke-dasharray:4 4}
.chart .grid{stroke:#eaeded}
.chart text{font-size:11px;fill:#5d6d7e}
img.picture{max-width:20rem;border-radius:.5rem;margin:.25rem}
dd.error{color:#922b21}
code.secret{background:#fef9e7;padding:.2rem .4rem}
";

/// The page's language: `?lang=` when given, else the browser's.
pub(crate) fn lang_of(query: Option<&str>, headers: &HeaderMap) -> Lang {
    Lang::choose(
        query,
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// A whole page in `lang`, with a switch to the other language at `switch` (this page's path).
fn page(lang: Lang, title: &str, switch: &str, body: Markup) -> Markup {
    layout(lang, title, switch, "", &[], body)
}

/// A page as wide as the screen (a big screen's dashboard), loading `scripts` (assets' paths).
fn wide_page(lang: Lang, title: &str, switch: &str, scripts: &[&str], body: Markup) -> Markup {
    layout(lang, title, switch, "wide", scripts, body)
}

fn layout(
    lang: Lang,
    title: &str,
    switch: &str,
    class: &str,
    scripts: &[&str],
    body: Markup,
) -> Markup {
    let other = lang.other();
    html! {
        (DOCTYPE)
        html lang=(if lang == Lang::Zh { "zh-CN" } else { "en" }) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ParkFlow" }
                style { (maud::PreEscaped(STYLE)) }
                @for script in scripts {
                    script src=(script) defer {}
                }
            }
            body {
                main class=[(!class.is_empty()).then_some(class)] {
                    nav { a href={ (switch) "?lang=" (other.code()) } { (Text::of(other).language) } }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An HTML answer with the pages' headers: nothing loaded from elsewhere, never framed, never
/// cached (it shows what is due now), no referrer to another site (the address may name a
/// session); within this site the origin is sent, which the login pages' forms need (a browser
/// sends `Origin: null` for a form on a page with no referrer at all).
fn respond(status: StatusCode, markup: Markup) -> Response {
    with_policy(
        status,
        markup.into_string().into(),
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
}

/// [`respond`] for a page that runs its own script (from `/ui/assets/`) and reads this
/// platform's streams: nothing else runs, nothing else is fetched.
fn respond_with_script(status: StatusCode, body: bytes::Bytes) -> Response {
    with_policy(
        status,
        body,
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
}

fn with_policy(status: StatusCode, body: bytes::Bytes, policy: &'static str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, policy),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page that says one thing: a refusal, an error, a result.
pub(crate) fn message_page(status: StatusCode, lang: Lang, title: &str, message: &str) -> Response {
    respond(
        status,
        page(
            lang,
            title,
            "",
            html! {
                p.error role="alert" { (message) }
                p { a href="/ui/login" { (Text::of(lang).back) } }
            },
        ),
    )
}

/// An API error as a page: the API's status and message (a server error's cause is logged, not
/// shown).
pub(crate) fn api_error_page(lang: Lang, error: crate::http::error::ApiError) -> Response {
    let (status, _) = error.status_and_code();
    let text = Text::of(lang);
    let message = if status.is_server_error() {
        tracing::error!(%error, "a page failed");
        text.try_again.to_owned()
    } else {
        error.to_string()
    };
    message_page(status, lang, text.refused, &message)
}
