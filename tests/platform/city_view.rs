//! The city view (`/ui/`) in a real browser on a big screen: it shows the numbers the
//! availability API gives, and changes, without a reload, when a lot's count changes.
//! Screenshots go to `target/ui-screenshots/`.

use std::time::Duration;

use fantoccini::Locator;
use parkflow_protocol::{Direction, GateAction};

use crate::support::browser::Browser;
use crate::support::{Broker, Database, Setup, TestDevice, TestPlatform, World, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_view_shows_the_apis_numbers_and_follows_them_live() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let Some(browser) = Browser::start(Browser::BIG_SCREEN).await else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let lot = world.lot.to_string();
    let api = |path: String| {
        let platform = &platform;
        async move { platform.admin_get(&path).await }
    };
    let availability = api(format!("/v1/lots/{lot}/availability")).await;

    browser.client.goto(&platform.url("/ui/")).await.unwrap();
    assert_eq!(browser.text("h1").await, "Parking in the city now");
    let circle = format!("#l-{lot}");
    let attr = |name: &'static str| {
        let (client, circle) = (browser.client.clone(), circle.clone());
        async move {
            client
                .find(Locator::Css(&circle))
                .await
                .unwrap()
                .attr(name)
                .await
                .unwrap()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        }
    };
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
    // One lot in this city: the totals are its counts.
    let total_free: u64 = browser.text("#free").await.parse().unwrap();
    assert_eq!(Some(total_free), availability["free"].as_u64());
    browser.screenshot("city-view").await;

    // The page listens to the stream; a car comes in: the page follows without a reload.
    eventually(Duration::from_secs(10), "the page subscribed", || {
        let platform = &platform;
        async move {
            (platform.metric("parkflow_availability_subscribers").await >= 1.0).then_some(())
        }
    })
    .await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let command = entry
        .decide(&entry.read(world.enrolled.as_str(), Direction::Entry))
        .await;
    assert_eq!(command.action, GateAction::Open);
    let after = eventually(Duration::from_secs(10), "the API counts the car", || {
        let api = &api;
        let lot = &lot;
        let before = availability["occupied"].as_u64();
        async move {
            let now = api(format!("/v1/lots/{lot}/availability")).await;
            (now["occupied"].as_u64() > before).then_some(now)
        }
    })
    .await;
    eventually(Duration::from_secs(10), "the page shows the car", || {
        let attr = &attr;
        let browser = &browser;
        let after = &after;
        async move {
            let occupied = attr("data-occupied").await;
            let free: u64 = browser.text("#free").await.parse().ok()?;
            (Some(occupied) == after["occupied"].as_u64() && Some(free) == after["free"].as_u64())
                .then_some(())
        }
    })
    .await;
    browser.screenshot("city-view-live").await;
    // Loaded again, the page (rendered once per published board) shows the new counts.
    browser.client.goto(&platform.url("/ui/")).await.unwrap();
    assert_eq!(
        Some(attr("data-occupied").await),
        after["occupied"].as_u64()
    );

    // In Chinese, on request.
    browser
        .client
        .goto(&platform.url("/ui/?lang=zh"))
        .await
        .unwrap();
    assert_eq!(browser.text("h1").await, "全市实时停车");
    browser.screenshot("city-view-zh").await;
    browser.stop().await;
    platform.stop().await;
}
