//! The pay page in a real browser (headless Chromium through ChromeDriver): a car held at the
//! exit, its driver opens the `pay_url` on a phone-sized screen, sees what is due, is declined
//! once, pays, and sees the barrier open — which the lane's camera receives as a signed `open`.
//! Screenshots of each page go to `target/ui-screenshots/`.

use std::time::Duration;

use fantoccini::Locator;
use parkflow_protocol::{Direction, GateAction, GateReason};
use serde_json::json;

use crate::support::browser::Browser;
use crate::support::{Broker, Database, Setup, TestDevice, TestPlatform, World, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_driver_pays_on_the_page_and_the_barrier_opens() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let Some(browser) = Browser::start(Browser::PHONE).await else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let plate = "浙R20261";
    entry
        .decide(&entry.read_at(
            plate,
            Direction::Entry,
            chrono::Utc::now() - chrono::Duration::minutes(75),
        ))
        .await;
    let held_read = exit.read(plate, Direction::Exit);
    let held = exit.decide(&held_read).await;
    assert_eq!(
        (held.action, held.reason),
        (GateAction::Hold, GateReason::PaymentRequired)
    );
    let due = held.amount_due.unwrap();
    // At once: the page is there the moment the hold is published.
    let pay_url = held.pay_url.clone().unwrap();
    browser.goto(&pay_url).await;
    let amount = browser.text("dd.amount").await;
    assert!(amount.contains(&due.to_string()), "{amount} shows {due}");
    assert!(browser.text("dl").await.contains(&world.plan.lots[0].name));
    browser.screenshot("pay-due").await;

    // A declined card: the page says so and keeps the form.
    let form = |account: &'static str| {
        let client = browser.client.clone();
        async move {
            let input = client.find(Locator::Id("payment_account")).await.unwrap();
            input.send_keys(account).await.unwrap();
            client
                .find(Locator::Css("button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
    };
    form("decline-card").await;
    let alert = browser.text("p.error").await;
    assert!(alert.contains("declined"), "{alert}");
    browser.screenshot("pay-declined").await;
    assert!(
        exit.commands_for(&held_read.event_id)
            .iter()
            .all(|c| c.action != GateAction::Open)
    );

    form("acct-on-the-phone").await;
    let opening = browser.text("#paid").await;
    assert!(opening.contains("barrier"), "{opening}");
    let receipt = browser.text("#receipt").await;
    browser.screenshot("pay-paid").await;
    let opened = eventually(Duration::from_secs(10), "the barrier opened", || {
        let commands = exit.commands_for(&held_read.event_id);
        async move { commands.into_iter().find(|c| c.action == GateAction::Open) }
    })
    .await;
    assert_eq!(opened.reason, GateReason::Paid);
    // The receipt is the payment's id: it proves the plate (drivers' claims).
    let (status, paid) = platform
        .call(
            None,
            reqwest::Method::GET,
            url::Url::parse(&pay_url).unwrap().path(),
            None,
        )
        .await;
    assert_eq!((status.as_u16(), &paid["status"]), (200, &json!("paid")));
    assert!(uuid::Uuid::parse_str(&receipt).is_ok(), "{receipt}");

    // The same page in Simplified Chinese, after paying.
    browser.goto(&format!("{pay_url}?lang=zh")).await;
    assert!(browser.text("h1").await.contains("已付款"));
    browser.screenshot("pay-paid-zh").await;
    browser.stop().await;
    platform.stop().await;
}
