//! Arrears end to end, through MQTT and the API: a driver whose debit fails gets an invoice; unpaid
//! past the window they are suspended and their next exit is held; paying the invoice lets the
//! held car out at once.

use std::time::Duration;

use crate::support::{
    Broker, Database, Setup, TestDevice, TestPlatform, World, eventually, registration_document,
};
use chrono::Utc;
use parkflow_protocol::{Direction, GateAction, GateReason};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

async fn driver_get(platform: &TestPlatform, key: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(platform.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn a_failed_debit_ends_in_a_held_exit_until_the_invoice_is_paid(setup: Setup) {
    let world = World::new(setup, 10);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let client = reqwest::Client::new();

    // A driver enrols with a card that will be declined.
    let plate = "浙K86421";
    let enrolled: Value = client
        .post(platform.url("/v1/drivers"))
        .json(
            &json!({ "name": "Lin", "payment_account": "decline-card", "auto_debit_consent": true,
                       "plates": [{ "plate": plate, "plate_color": "blue",
                                    "registration_document": registration_document(plate) }] }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = enrolled["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pf_"));
    assert_eq!(enrolled["claims"][0]["status"], "granted", "{enrolled}");
    // Someone else cannot take the plate by enrolling it: without proof their claim is pending.
    let taken = client
        .post(platform.url("/v1/drivers"))
        .json(&json!({ "name": "Other", "payment_account": "acct", "auto_debit_consent": true, "plates": [{ "plate": plate }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 201);
    let taken: Value = taken.json().await.unwrap();
    assert_eq!(taken["claims"][0]["status"], "pending", "{taken}");
    assert_eq!(taken["driver"]["plates"], json!([]), "{taken}");

    // In and out: leave first; the debit fails later and becomes an invoice.
    let entered_at = Utc::now() - chrono::Duration::minutes(50);
    assert_eq!(
        entry
            .decide(&entry.read_at(plate, Direction::Entry, entered_at))
            .await
            .action,
        GateAction::Open
    );
    let out = exit.decide(&exit.read(plate, Direction::Exit)).await;
    assert_eq!(
        (out.action, out.reason),
        (GateAction::Open, GateReason::BillLater)
    );
    let invoice = eventually(WAIT, "an invoice for the failed debit", || async {
        let invoices = driver_get(&platform, &key, "/v1/me/invoices").await;
        invoices.as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(invoice["status"], "open");

    // Unpaid past the window (two seconds here): suspended.
    eventually(WAIT, "the driver suspended", || async {
        (driver_get(&platform, &key, "/v1/me").await["status"] == "suspended").then_some(())
    })
    .await;

    // The debt stays with the debtor: the plate cannot leave the account (to be enrolled again by
    // a driver in good standing), nor can auto-debit be withdrawn.
    let shed = client
        .delete(platform.url(&format!("/v1/me/plates/{plate}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 409);
    let shed: Value = shed.json().await.unwrap();
    assert_eq!(shed["error"]["code"], "debt_outstanding", "{shed}");
    let withdrawn = client
        .patch(platform.url("/v1/me"))
        .bearer_auth(&key)
        .json(&json!({ "auto_debit_consent": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(withdrawn.status(), 409);
    // Enrolling again as a new driver, papers in hand: the claim is proven but the plate is still
    // the debtor's, so it is disputed, and no operator can hand it over while the debt stands.
    let fresh_start: Value = client
        .post(platform.url("/v1/drivers"))
        .json(&json!({ "name": "Fresh start", "payment_account": "acct", "auto_debit_consent": true,
                       "plates": [{ "plate": plate, "registration_document": registration_document(plate) }] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        fresh_start["claims"][0]["status"], "disputed",
        "{fresh_start}"
    );
    assert_eq!(fresh_start["driver"]["plates"], json!([]), "{fresh_start}");
    let handed_over = client
        .post(platform.url(&format!(
            "/v1/claims/{}/decision",
            fresh_start["claims"][0]["id"].as_str().unwrap()
        )))
        .bearer_auth(crate::support::ADMIN_KEY)
        .json(&json!({ "decision": "approve", "reason": "papers seen" }))
        .send()
        .await
        .unwrap();
    assert_eq!(handed_over.status(), 409);
    let handed_over: Value = handed_over.json().await.unwrap();
    assert_eq!(
        handed_over["error"]["code"], "debt_outstanding",
        "{handed_over}"
    );
    assert_eq!(
        driver_get(&platform, &key, "/v1/me").await["plates"][0]["plate"],
        plate
    );

    // Back again for twenty minutes (a stay that costs something): the entry opens, the exit holds
    // for payment. (Reads a millisecond apart would be a free stay.)
    let back_at = Utc::now() - chrono::Duration::minutes(20);
    assert_eq!(
        entry
            .decide(&entry.read_at(plate, Direction::Entry, back_at))
            .await
            .action,
        GateAction::Open
    );
    let held_read = exit.read(plate, Direction::Exit);
    let held = exit.decide(&held_read).await;
    assert_eq!(
        (held.action, held.reason),
        (GateAction::Hold, GateReason::PaymentRequired)
    );
    assert!(held.pay_url.is_some() && held.amount_due.is_some());

    // Paying the invoice clears the debt at once, and the waiting barrier opens.
    let pay = || async {
        client
            .post(platform.url(&format!(
                "/v1/me/invoices/{}/pay",
                invoice["id"].as_str().unwrap()
            )))
            .bearer_auth(&key)
            .header("Idempotency-Key", "invoice-1")
            .json(&json!({ "payment_account": "good-card" }))
            .send()
            .await
            .unwrap()
    };
    let paid = pay().await;
    assert_eq!(paid.status(), 200);
    let paid: Value = paid.json().await.unwrap();
    assert_eq!(paid["reinstated"], true);
    assert_eq!(paid["amount"], invoice["amount"]);
    let opened = eventually(WAIT, "the held barrier opened", || {
        let commands = exit.commands_for(&held_read.event_id);
        async move { commands.into_iter().find(|c| c.action == GateAction::Open) }
    })
    .await;
    assert_eq!(opened.reason, GateReason::BillLater);
    // The same key with another body is a mistake, not the earlier payment.
    let other_body = client
        .post(platform.url(&format!(
            "/v1/me/invoices/{}/pay",
            invoice["id"].as_str().unwrap()
        )))
        .bearer_auth(&key)
        .header("Idempotency-Key", "invoice-1")
        .json(&json!({ "payment_account": "another-card" }))
        .send()
        .await
        .unwrap();
    assert_eq!(other_body.status(), 422);
    // Paying again with the same key pays nothing more.
    let again: Value = pay().await.json().await.unwrap();
    assert_eq!(again["payment_id"], paid["payment_id"]);
    assert_eq!(
        driver_get(&platform, &key, "/v1/me").await["status"],
        "active"
    );
    let invoices = driver_get(&platform, &key, "/v1/me/invoices").await;
    assert_eq!(
        invoices
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "paid")
            .count(),
        1
    );
    // A driver sees their own sessions only, and needs their key to.
    let mine = driver_get(&platform, &key, "/v1/me/sessions").await;
    assert!(mine.as_array().unwrap().iter().all(|s| s["plate"] == plate));
    let anonymous = client
        .get(platform.url("/v1/me/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Once the debts are cleared (the last stay's declined debit written off as it comes) and the
    // car is gone, the disputed claim can be decided: the plate changes hands.
    let handed_over = eventually(WAIT, "the plate handed over", || {
        let (client, id) = (client.clone(), fresh_start["claims"][0]["id"].clone());
        let url = platform.url(&format!("/v1/claims/{}/decision", id.as_str().unwrap()));
        let (platform, key) = (&platform, &key);
        async move {
            let invoices = driver_get(platform, key, "/v1/me/invoices").await;
            for open in invoices
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["status"] == "open")
            {
                let path = format!("/v1/invoices/{}/write-off", open["id"].as_str().unwrap());
                client
                    .post(platform.url(&path))
                    .bearer_auth(crate::support::ADMIN_KEY)
                    .send()
                    .await
                    .unwrap();
            }
            let answer = client
                .post(url)
                .bearer_auth(crate::support::ADMIN_KEY)
                .json(&json!({ "decision": "approve", "reason": "papers seen" }))
                .send()
                .await
                .unwrap();
            (answer.status() == 200).then_some(answer)
        }
    })
    .await;
    let handed_over: Value = handed_over.json().await.unwrap();
    assert_eq!(
        (&handed_over["status"], &handed_over["proof"]),
        (&json!("granted"), &json!("registration"))
    );
    assert_eq!(
        driver_get(&platform, &key, "/v1/me").await["plates"],
        json!([])
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_debit_ends_in_a_held_exit_until_the_invoice_is_paid_on_sqlite() {
    if let Some(setup) = Setup::available(Database::Sqlite, Broker::Embedded) {
        a_failed_debit_ends_in_a_held_exit_until_the_invoice_is_paid(setup).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_debit_ends_in_a_held_exit_until_the_invoice_is_paid_on_postgres() {
    if let Some(setup) = Setup::available(Database::Postgres, Broker::Embedded) {
        a_failed_debit_ends_in_a_held_exit_until_the_invoice_is_paid(setup).await;
    }
}
