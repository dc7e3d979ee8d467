//! The city view (`/ui/`) in a real browser on a big screen: it shows the numbers the
//! availability API gives, and changes, without a reload, when a bay sensor reports.
//! Screenshots go to `target/ui-screenshots/`.

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::{Broker, Database, Setup, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_view_shows_the_apis_numbers_and_follows_them_live() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let Some(browser) = Browser::start(Browser::BIG_SCREEN).await else {
        return;
    };
    // A gated lot and a street zone whose bays have sensors.
    let (world, zone, platform, sensors) = crate::occupancy::start(setup).await;
    let lot = world.lot.to_string();
    let api = |path: String| {
        let platform = &platform;
        async move { platform.admin_get(&path).await }
    };
    let availability = api(format!("/v1/lots/{lot}/availability")).await;

    browser.goto(&platform.url("/ui/")).await;
    assert_eq!(browser.text("h1").await, "Parking in the city now");
    let circle = format!("#l-{lot}");
    let attr = |name: &'static str| browser.number(&circle, name);
    for key in ["total", "free", "occupied", "unknown"] {
        let shown = attr(match key {
            "total" => "data-total",
            "free" => "data-free",
            "occupied" => "data-occupied",
            _ => "data-unknown",
        })
        .await;
        assert_eq!(Some(shown), availability[key].as_u64(), "{key}");
    }
    // The totals are the city's: the lot's and the zone's counts.
    let zone_before = api(format!("/v1/lots/{}/availability", zone.lot)).await;
    let total_free: u64 = browser.text("#free").await.parse().unwrap();
    assert_eq!(
        Some(total_free),
        availability["free"]
            .as_u64()
            .zip(zone_before["free"].as_u64())
            .map(|(a, b)| a + b)
    );
    browser.screenshot("city-view").await;

    // The page listens to the stream; a car comes in: the page follows without a reload.
    eventually(Duration::from_secs(10), "the page subscribed", || {
        let platform = &platform;
        async move {
            (platform.metric("parkflow_availability_subscribers").await >= 1.0).then_some(())
        }
    })
    .await;
    // A car parks in the zone's first bay: its sensor says so.
    sensors
        .send(zone.occupancy(0, true, 1, chrono::Utc::now()))
        .await;
    let zone_lot = zone.lot.to_string();
    let after = eventually(Duration::from_secs(10), "the API counts the car", || {
        let api = &api;
        let zone_lot = &zone_lot;
        let before = zone_before["occupied"].as_u64();
        async move {
            let now = api(format!("/v1/lots/{zone_lot}/availability")).await;
            (now["occupied"].as_u64() > before).then_some(now)
        }
    })
    .await;
    let zone_circle = format!("#l-{zone_lot}");
    let zone_attr = |name: &'static str| browser.number(&zone_circle, name);
    eventually(Duration::from_secs(10), "the page shows the car", || {
        let zone_attr = &zone_attr;
        let browser = &browser;
        let after = &after;
        let lot_free = availability["free"].as_u64();
        async move {
            let occupied = zone_attr("data-occupied").await;
            let free: u64 = browser.text("#free").await.parse().ok()?;
            (Some(occupied) == after["occupied"].as_u64()
                && Some(free) == after["free"].as_u64().zip(lot_free).map(|(a, b)| a + b))
            .then_some(())
        }
    })
    .await;
    browser.screenshot("city-view-live").await;
    // Loaded again, the page (rendered once per published board) shows the new counts.
    browser.goto(&platform.url("/ui/")).await;
    assert_eq!(
        Some(zone_attr("data-occupied").await),
        after["occupied"].as_u64()
    );

    // In Chinese, on request.
    browser.goto(&platform.url("/ui/?lang=zh")).await;
    assert_eq!(browser.text("h1").await, "全市实时停车");
    browser.screenshot("city-view-zh").await;
    browser.stop().await;
    platform.stop().await;
}
