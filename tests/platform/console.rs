//! The operator console and the driver portal in a real browser, and their trust boundary from
//! outside: an operator logs in with their key and sees only their lots; a manual open from the
//! lot page sends a signed command; a merge made in the review queue shows in the API; a viewer
//! sees no forms and a form posted with their session anyway is refused; forms without the
//! session's CSRF token, from another site, or after the key's revocation do nothing. A driver
//! enrols, is billed, and pays the invoice on their page. Screenshots go to
//! `target/ui-screenshots/`.

use std::time::Duration;

use chrono::Utc;
use parkflow_protocol::{Direction, EventId, GateAction, GateReason, LotId};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::browser::Browser;
use crate::support::{
    ADMIN_KEY, Broker, Database, Setup, TestDevice, TestPlatform, World, eventually,
    registration_document,
};
use parkflow_gateway::store::provision::{LotPlan, OperatorPlan};

const WAIT: Duration = Duration::from_secs(15);

/// A browser's session, spoken to directly: its cookie and its forms' CSRF token.
struct WebSession {
    cookie: String,
    csrf: String,
}

/// Logs in with `key` over HTTP, as a browser would; the session, and where the login went.
async fn log_in(platform: &TestPlatform, key: &str) -> (WebSession, String) {
    let client = no_redirects();
    let answer = client
        .post(platform.url("/ui/login"))
        .form(&[("key", key)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("__Host-pf_session="), "{set_cookie}");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/;"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let home = answer.headers()["location"].to_str().unwrap().to_owned();
    let page = get(platform, &cookie, &home).await.1;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry a CSRF token")
        .to_owned();
    (WebSession { cookie, csrf }, home)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(platform: &TestPlatform, cookie: &str, path: &str) -> (StatusCode, String) {
    let answer = no_redirects()
        .get(platform.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (answer.status(), answer.text().await.unwrap())
}

/// Posts a form with the session's cookie; `origin` as a browser sends it.
async fn post(
    platform: &TestPlatform,
    cookie: &str,
    origin: Option<&str>,
    path: &str,
    form: &[(&str, &str)],
) -> StatusCode {
    let mut request = no_redirects()
        .post(platform.url(path))
        .header("cookie", cookie)
        .form(form);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap().status()
}

/// A forged manual open carrying `csrf`.
fn forged(csrf: &str) -> [(&str, &str); 2] {
    [("csrf", csrf), ("reason", "forged")]
}

/// The world's lot (`op-test`) and another operator's.
fn two_operators(setup: Setup) -> (World, LotId) {
    let mut world = World::new(setup, 100);
    let other = LotId::parse(&format!("{}-other", world.lot)).unwrap();
    world.plan.operators.push(OperatorPlan {
        id: "op-other".into(),
        name: "Another operator".into(),
    });
    let mut lot: LotPlan = world.plan.lots[0].clone();
    lot.id = other.clone();
    lot.operator_id = "op-other".into();
    lot.name = "Another operator's car park".into();
    lot.gates.clear();
    world.plan.lots.push(lot);
    (world, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_their_lots_from_the_console() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let Some(browser) = Browser::start(Browser::BIG_SCREEN).await else {
        return;
    };
    let (world, other_lot) = two_operators(setup);
    let platform = TestPlatform::start(setup, &world).await;
    let lot = world.lot.to_string();
    let admin_key = platform.issue_key("operator_admin", Some("op-test")).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;

    // Some traffic: a car in, and an exit misread as a plate that never entered (a case).
    let now = Utc::now();
    entry
        .decide(&entry.read_at(
            "浙J88888",
            Direction::Entry,
            now - chrono::Duration::minutes(50),
        ))
        .await;
    let misread = exit.read("浙Q55555", Direction::Exit);
    assert_eq!(exit.decide(&misread).await.reason, GateReason::ReviewLater);
    let entered = eventually(WAIT, "the open session", || async {
        platform
            .sessions(&world.lot)
            .await
            .into_iter()
            .find(|s| s["plate"] == "浙J88888" && s["status"] == "open")
    })
    .await;
    let case = eventually(WAIT, "the review case", || async {
        let queue = platform.admin_get(&format!("/v1/review?lot={lot}")).await;
        queue
            .as_array()?
            .iter()
            .find(|c| c["plate"] == "浙Q55555")
            .cloned()
    })
    .await;

    // The login page, then the console: this operator's lot, not the other's.
    browser.goto(&platform.url("/ui/login")).await;
    assert_eq!(browser.text("h1").await, "Log in");
    browser.screenshot("console-login").await;
    browser.fill("#key", &admin_key).await;
    browser.submit("button[type=submit]").await;
    assert_eq!(browser.text("h1").await, "Operator console");
    let listed = browser.text("table").await;
    assert!(listed.contains(&lot), "{listed}");
    assert!(!listed.contains(other_lot.as_str()), "{listed}");
    browser.screenshot("console-lots").await;
    // The other operator's lot, asked for by address, is not found.
    browser
        .goto(&platform.url(&format!("/ui/console/lots/{other_lot}")))
        .await;
    assert!(browser.text(".error").await.contains("not found"));

    // The lot page: its lanes with their last reads; a manual open sends a signed command.
    browser
        .goto(&platform.url(&format!("/ui/console/lots/{lot}")))
        .await;
    let lane = browser.text("section.lane[data-gate='out-1']").await;
    assert!(lane.contains("浙Q55555"), "{lane}");
    assert!(
        browser
            .text("section.lane[data-gate='out-1'] dd.decision")
            .await
            .ends_with(" ms")
    );
    browser
        .fill(
            "section.lane[data-gate='in-1'] input[name=reason]",
            "ambulance at the entry",
        )
        .await;
    browser
        .submit("section.lane[data-gate='in-1'] button[type=submit]")
        .await;
    assert!(browser.text("p.done").await.contains("signed"));
    let opened = eventually(WAIT, "the manual open in the audit trail", || async {
        let trail = platform.admin_get("/v1/audit").await;
        trail
            .as_array()?
            .iter()
            .find(|e| e["action"] == "manual_open" && e["reason"] == "ambulance at the entry")
            .cloned()
    })
    .await;
    let details: Value = serde_json::from_str(opened["details"].as_str().unwrap()).unwrap();
    let event = EventId::parse(details["event_id"].as_str().unwrap()).unwrap();
    let command = entry.command_for(&event).await;
    assert_eq!(command.action, GateAction::Open);
    browser.screenshot("console-lot").await;

    // The review queue: the misread exit merged with the stay it ends, in the browser.
    browser.goto(&platform.url("/ui/console/review")).await;
    let form = format!("section.case[data-case='{}']", case["id"].as_str().unwrap());
    browser
        .choose(&format!("{form} select[name=action]"), "merge")
        .await;
    browser
        .choose(
            &format!("{form} select[name=with_session]"),
            entered["id"].as_str().unwrap(),
        )
        .await;
    browser
        .fill(&format!("{form} input[name=reason]"), "exit misread")
        .await;
    browser.screenshot("console-review").await;
    browser.submit(&format!("{form} button[type=submit]")).await;
    assert!(browser.text("p.done").await.contains("resolved"));
    let merged = platform
        .admin_get(&format!("/v1/sessions/{}", entered["id"].as_str().unwrap()))
        .await;
    assert_eq!(merged["status"], "closed", "{merged}");
    assert_eq!(merged["exit_event_id"], misread.event_id.as_str());
    let queue = platform.admin_get(&format!("/v1/review?lot={lot}")).await;
    assert!(
        queue
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != case["id"]),
        "{queue}"
    );

    // Devices, money: pages of this operator's; screenshots.
    browser
        .goto(&platform.url(&format!("/ui/console/devices?lot={lot}")))
        .await;
    assert_eq!(
        browser
            .count(&format!("tr[data-device='{}']", world.entry_camera))
            .await,
        1
    );
    browser.screenshot("console-devices").await;
    // New credentials for the exit camera, shown once; then it is revoked, from the page.
    let exit_row = format!("tr[data-device='{}']", world.exit_camera);
    browser
        .submit(&format!("{exit_row} form[action$='/rotate'] button"))
        .await;
    assert!(browser.text("p.done").await.contains("once"));
    assert_eq!(browser.count("code.secret").await, 2);
    browser
        .goto(&platform.url(&format!("/ui/console/devices?lot={lot}")))
        .await;
    browser
        .submit(&format!("{exit_row} form[action*='/revoke'] button"))
        .await;
    assert!(browser.text("p.done").await.contains("revoked"));
    let devices = platform.admin_get(&format!("/v1/lots/{lot}/devices")).await;
    let exit_camera = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == world.exit_camera.as_str())
        .cloned()
        .unwrap();
    assert!(!exit_camera["revoked_at"].is_null(), "{exit_camera}");
    browser.goto(&platform.url("/ui/console/money")).await;
    assert!(browser.text("h1").await.contains("Money"));
    browser.screenshot("console-money").await;
    // The platform's health is the platform admin's only.
    browser.goto(&platform.url("/ui/console/health")).await;
    assert!(browser.text(".error").await.contains("role"));

    // A viewer: the same pages without forms; a form posted with the viewer's session anyway is
    // refused, and no command goes out.
    let viewer_key = platform.issue_key("operator_viewer", Some("op-test")).await;
    let (viewer, home) = log_in(&platform, &viewer_key).await;
    assert_eq!(home, "/ui/console");
    let (status, page) = get(
        &platform,
        &viewer.cookie,
        &format!("/ui/console/lots/{lot}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("/gates/in-1/open"),
        "a viewer sees no open form"
    );
    let open = format!("/ui/console/lots/{lot}/gates/in-1/open");
    let refused = post(
        &platform,
        &viewer.cookie,
        None,
        &open,
        &[("csrf", &viewer.csrf), ("reason", "viewer tries")],
    )
    .await;
    assert_eq!(refused, StatusCode::FORBIDDEN);

    // The attacks on an operator admin's session: no token, another's token, another site, and
    // after the key is revoked.
    let (admin, _) = log_in(&platform, &admin_key).await;
    assert_eq!(
        post(
            &platform,
            &admin.cookie,
            None,
            &open,
            &[("reason", "no token")]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&platform, &admin.cookie, None, &open, &forged(&viewer.csrf)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(
            &platform,
            &admin.cookie,
            Some("https://evil.example"),
            &open,
            &forged(&admin.csrf)
        )
        .await,
        StatusCode::FORBIDDEN
    );
    let (status, trail) = platform
        .call(Some(ADMIN_KEY), Method::GET, "/v1/audit", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        trail
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["reason"] != "forged" && e["reason"] != "viewer tries"),
        "{trail}"
    );
    let keys = platform.admin_get("/v1/keys").await;
    let admin_key_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "operator_admin" && k["revoked_at"].is_null())
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();
    let (status, _) = platform
        .call(
            Some(ADMIN_KEY),
            Method::DELETE,
            &format!("/v1/keys/{admin_key_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = get(&platform, &admin.cookie, "/ui/console").await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "a revoked key's session is over"
    );
    assert_eq!(
        post(&platform, &admin.cookie, None, &open, &forged(&admin.csrf)).await,
        StatusCode::SEE_OTHER
    );
    // A manual open is in the audit trail before its command goes out, within the request:
    // every refused post has answered, so none of them opened anything.
    let trail = platform.admin_get("/v1/audit").await;
    assert_eq!(
        trail
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "manual_open")
            .count(),
        1,
        "only the browser's open: {trail}"
    );
    browser.stop().await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_admin_reads_the_platforms_health() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let Some(browser) = Browser::start(Browser::BIG_SCREEN).await else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    entry
        .decide(&entry.read(world.enrolled.as_str(), Direction::Entry))
        .await;
    browser.goto(&platform.url("/ui/login")).await;
    browser.fill("#key", ADMIN_KEY).await;
    browser.submit("button[type=submit]").await;
    browser.goto(&platform.url("/ui/console/health")).await;
    assert!(browser.text("#p50").await.ends_with(" ms"));
    assert!(browser.text("#p99").await.ends_with(" ms"));
    browser.screenshot("console-health").await;
    // In Chinese, on request; the choice stays for the next page.
    browser.goto(&platform.url("/ui/console?lang=zh")).await;
    assert_eq!(browser.text("h1").await, "运营控制台");
    browser.goto(&platform.url("/ui/console/money")).await;
    assert_eq!(browser.text("h1").await, "收费");
    browser.screenshot("console-money-zh").await;
    browser.stop().await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_enrols_and_pays_an_invoice_in_the_browser() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let Some(browser) = Browser::start(Browser::PHONE).await else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let plate = "浙K86421";

    // Enrolment on the phone, with a card the bank will decline.
    browser.goto(&platform.url("/ui/driver/enrol")).await;
    browser.fill("#name", "Lin").await;
    browser.fill("#plate", plate).await;
    browser
        .fill("#registration_document", &registration_document(plate))
        .await;
    browser.fill("#payment_account", "decline-card").await;
    browser.click("input[name=auto_debit_consent]").await;
    browser.submit("button[type=submit]").await;
    let key = browser.text("#api-key").await;
    assert!(key.starts_with("pf_"), "{key}");
    browser.screenshot("driver-enrolled").await;
    let (status, me) = platform.call(Some(&key), Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["plates"][0]["plate"], plate, "{me}");

    // In and out: leave first; the debit fails later and becomes an invoice.
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    entry
        .decide(&entry.read_at(
            plate,
            Direction::Entry,
            Utc::now() - chrono::Duration::minutes(50),
        ))
        .await;
    assert_eq!(
        exit.decide(&exit.read(plate, Direction::Exit)).await.reason,
        GateReason::BillLater
    );
    let invoice = eventually(WAIT, "an invoice for the failed debit", || async {
        let (_, invoices) = platform
            .call(Some(&key), Method::GET, "/v1/me/invoices", None)
            .await;
        invoices.as_array()?.first().cloned()
    })
    .await;
    assert_eq!(invoice["status"], "open");

    // The portal (logged in at enrolment) shows it; paid from another account, it is paid.
    browser.goto(&platform.url("/ui/driver")).await;
    let row = format!("tr[data-invoice='{}']", invoice["id"].as_str().unwrap());
    assert_eq!(browser.text(&format!("{row} td.status")).await, "open");
    browser.screenshot("driver-portal").await;
    browser
        .fill(&format!("{row} input[name=payment_account]"), "good-card")
        .await;
    browser.submit(&format!("{row} button[type=submit]")).await;
    assert_eq!(browser.text(&format!("{row} td.status")).await, "paid");
    let (_, invoices) = platform
        .call(Some(&key), Method::GET, "/v1/me/invoices", None)
        .await;
    assert_eq!(invoices[0]["status"], "paid", "{invoices}");
    assert_eq!(invoices[0]["amount"], invoice["amount"]);
    browser.screenshot("driver-paid").await;
    // A second car, claimed with its papers: it is theirs at once.
    let second = "浙K86422";
    browser
        .fill("form[action='/ui/driver/plates'] input[name=plate]", second)
        .await;
    browser
        .fill(
            "form[action='/ui/driver/plates'] input[name=registration_document]",
            &registration_document(second),
        )
        .await;
    browser
        .submit("form[action='/ui/driver/plates'] button[type=submit]")
        .await;
    eventually(WAIT, "the second plate on the page", || async {
        let plates = browser.text("ul.plates").await;
        plates.contains(second).then_some(())
    })
    .await;
    let (_, me) = platform.call(Some(&key), Method::GET, "/v1/me", None).await;
    assert!(
        me["plates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["plate"] == second),
        "{me}"
    );
    // The driver's session is not the console's.
    browser.goto(&platform.url("/ui/console")).await;
    assert!(
        browser
            .client
            .current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/ui/driver")
    );
    browser.stop().await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_refuse_unknown_and_app_keys_on_sqlite() {
    logins_refuse_unknown_and_app_keys(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_refuse_unknown_and_app_keys_on_postgres() {
    logins_refuse_unknown_and_app_keys(Database::Postgres).await;
}

/// Login answers even without a browser, and refuses what it should; every console page's
/// queries run on this engine.
async fn logins_refuse_unknown_and_app_keys(database: Database) {
    let Some(setup) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    exit.decide(&exit.read("浙Q55555", Direction::Exit)).await;
    let client = no_redirects();
    let refused = client
        .post(platform.url("/ui/login"))
        .form(&[("key", "pf_not-a-key")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get("set-cookie").is_none());
    let app = platform.issue_key("navigation_app", None).await;
    let refused = client
        .post(platform.url("/ui/login"))
        .form(&[("key", app.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    // A made-up session cookie is no session.
    let (status, _) = get(&platform, "__Host-pf_session=made-up", "/ui/console").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Logging out ends the session on the server, not only in the browser.
    let (session, _) = log_in(&platform, ADMIN_KEY).await;
    // A request carrying a second session cookie (planted by a sibling site) is no session.
    let planted = format!("{}; __Host-pf_session=planted", session.cookie);
    assert_eq!(
        get(&platform, &planted, "/ui/console").await.0,
        StatusCode::SEE_OTHER
    );
    // What the framework refuses (an id that does not parse) is a page, not the input echoed
    // as text, and nothing is cached.
    let answer = no_redirects()
        .get(platform.url("/ui/console/review/%3Cscript%3E/pictures/1"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    assert!(
        answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(answer.headers().contains_key("content-security-policy"));
    assert!(!answer.text().await.unwrap().contains("<script>"));
    let lot = &world.lot;
    for page in [
        "/ui/console".to_owned(),
        format!("/ui/console/lots/{lot}"),
        "/ui/console/review".to_owned(),
        format!("/ui/console/devices?lot={lot}"),
        "/ui/console/money".to_owned(),
        "/ui/console/health".to_owned(),
        "/ui/console/money/settlements.csv?from=2026-01-01&to=2026-12-31".to_owned(),
    ] {
        let (status, body) = get(&platform, &session.cookie, &page).await;
        assert_eq!(status, StatusCode::OK, "{page}: {body}");
    }
    assert_eq!(
        post(
            &platform,
            &session.cookie,
            None,
            "/ui/logout",
            &[("csrf", &session.csrf)]
        )
        .await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        get(&platform, &session.cookie, "/ui/console").await.0,
        StatusCode::SEE_OTHER
    );
    platform.stop().await;
}

/// Logging in again from the same browser ends its earlier session; one key keeps at most 20
/// live sessions, the oldest ending first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_do_not_pile_up() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let key = platform.issue_key("operator_viewer", Some("op-test")).await;
    let (first, _) = log_in(&platform, &key).await;
    let again = no_redirects()
        .post(platform.url("/ui/login"))
        .header("cookie", &first.cookie)
        .form(&[("key", key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get(&platform, &first.cookie, "/ui/console").await.0,
        StatusCode::SEE_OTHER
    );
    let mut sessions = Vec::new();
    for _ in 0..21 {
        sessions.push(log_in(&platform, &key).await.0);
    }
    assert_eq!(
        get(&platform, &sessions[0].cookie, "/ui/console").await.0,
        StatusCode::SEE_OTHER
    );
    for session in &sessions[1..] {
        assert_eq!(
            get(&platform, &session.cookie, "/ui/console").await.0,
            StatusCode::OK
        );
    }
    platform.stop().await;
}
