//! The web pages people use, server-rendered by this binary with nothing fetched from elsewhere
//! (styles inline, no script): so far the pay page a held car's `pay_url` opens in a phone's
//! browser. Every string is in [`text`], per language.

pub(crate) mod pay;
pub(crate) mod text;

use axum::http::{HeaderValue, StatusCode, header};
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
";

/// A whole page in `lang`, with a switch to the other language at `switch` (this page's path).
fn page(lang: Lang, title: &str, switch: &str, body: Markup) -> Markup {
    let other = lang.other();
    html! {
        (DOCTYPE)
        html lang=(if lang == Lang::Zh { "zh-CN" } else { "en" }) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ParkFlow" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                main {
                    nav { a href={ (switch) "?lang=" (other.code()) } { (Text::of(other).language) } }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An HTML answer with the pages' headers: nothing loaded from elsewhere, never framed, never
/// cached (it shows what is due now), no referrer (the address names a session).
fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
