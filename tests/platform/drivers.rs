//! A driver manages their own account (issue: operators, drivers and security): withdrawing
//! auto-debit consent makes their cars pay at the exit; giving it back lets them leave first and
//! pay later again, at once.

use crate::support::{
    ADMIN_KEY, Broker, Database, Setup, TestDevice, TestPlatform, World, registration_document,
};
use parkflow_protocol::{Direction, GateAction, GateReason};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(
    platform: &TestPlatform,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    platform.call(key, method, path, body.as_ref()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_withdrawn_means_paying_at_the_exit_until_it_is_given_back() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let plate = "浙L24680";
    let (status, enrolled) = call(
        &platform,
        None,
        Method::POST,
        "/v1/drivers",
        Some(
            json!({"name": "Lin", "plates": [{"plate": plate, "registration_document": registration_document(plate)}],
                    "payment_account": "acct-lin", "auto_debit_consent": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let key = enrolled["api_key"].as_str().unwrap();
    let visit = |entry: &mut TestDevice, exit: &mut TestDevice| {
        let (entry_read, exit_read) = (
            entry.read_at(
                plate,
                Direction::Entry,
                chrono::Utc::now() - chrono::Duration::minutes(40),
            ),
            exit.read(plate, Direction::Exit),
        );
        (entry_read, exit_read)
    };

    let (read_in, read_out) = visit(&mut entry, &mut exit);
    entry.decide(&read_in).await;
    assert_eq!(exit.decide(&read_out).await.reason, GateReason::BillLater);

    let (status, me) = call(
        &platform,
        Some(key),
        Method::PATCH,
        "/v1/me",
        Some(json!({"auto_debit_consent": false, "payment_account": "acct-lin-2"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["auto_debit"], false);
    let (read_in, read_out) = visit(&mut entry, &mut exit);
    entry.decide(&read_in).await;
    let held = exit.decide(&read_out).await;
    assert_eq!(
        (held.action, held.reason),
        (GateAction::Hold, GateReason::PaymentRequired)
    );
    assert!(held.amount_due.is_some() && held.pay_url.is_some());
    // A plate added meanwhile is no exception: without consent it pays at the exit too.
    let (status, _) = call(
        &platform,
        Some(key),
        Method::POST,
        "/v1/me/plates",
        Some(json!({"plate": "浙L13579", "registration_document": registration_document("浙L13579")})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // Entered well before (a read taken in the same millisecond as the exit's is a free stay).
    entry
        .decide(&entry.read_at(
            "浙L13579",
            Direction::Entry,
            chrono::Utc::now() - chrono::Duration::minutes(40),
        ))
        .await;
    let held = exit.decide(&exit.read("浙L13579", Direction::Exit)).await;
    assert_eq!(
        (held.action, held.reason),
        (GateAction::Hold, GateReason::PaymentRequired)
    );

    let (status, me) = call(
        &platform,
        Some(key),
        Method::PATCH,
        "/v1/me",
        Some(json!({"auto_debit_consent": true})),
    )
    .await;
    assert_eq!((status, &me["auto_debit"]), (StatusCode::OK, &json!(true)));
    // With consent again, the next visit leaves first and pays later.
    let (read_in, read_out) = visit(&mut entry, &mut exit);
    entry.decide(&read_in).await;
    assert_eq!(exit.decide(&read_out).await.reason, GateReason::BillLater);
    platform.stop().await;
}

/// Enrolling a stranger's plate shows nothing of where that car has been, nor where it is now,
/// and does not make the plate the enroller's: it is a claim, pending until proven, and its answer
/// is the same whether or not anyone holds the plate. The owner can still claim it with their
/// papers; and sees the plate's stays only from the moment it became theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_a_strangers_plate_shows_none_of_its_stays_and_takes_nothing_on_sqlite() {
    enrolling_a_strangers_plate_shows_none_of_its_stays_and_takes_nothing(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_a_strangers_plate_shows_none_of_its_stays_and_takes_nothing_on_postgres() {
    enrolling_a_strangers_plate_shows_none_of_its_stays_and_takes_nothing(Database::Postgres).await;
}

async fn enrolling_a_strangers_plate_shows_none_of_its_stays_and_takes_nothing(database: Database) {
    let Some(setup) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let plate = "浙M13579";
    // A plate someone holds (proven), and one nobody has ever enrolled.
    let held = "浙M24680";
    let never = "浙M97531";
    let (status, holder) = enrol(
        &platform,
        "Holder",
        held,
        Some(&registration_document(held)),
    )
    .await;
    assert_eq!(
        (status, &holder["claims"][0]["status"]),
        (StatusCode::CREATED, &json!("granted"))
    );
    // The owner's car came and went yesterday, and is parked now.
    let yesterday = chrono::Utc::now() - chrono::Duration::hours(30);
    entry
        .decide(&entry.read_at(plate, Direction::Entry, yesterday))
        .await;
    exit.decide(&exit.read_at(
        plate,
        Direction::Exit,
        yesterday + chrono::Duration::hours(2),
    ))
    .await;
    let parked = entry
        .decide(&entry.read_at(
            plate,
            Direction::Entry,
            chrono::Utc::now() - chrono::Duration::minutes(30),
        ))
        .await;
    assert_eq!(parked.action, GateAction::Open);
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the stays on record",
        || async { (!platform.sessions(&world.lot).await.is_empty()).then_some(()) },
    )
    .await;

    // Someone else enrols the plate and asks where it has been.
    let (status, enrolled) = enrol(&platform, "Stalker", plate, None).await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    assert_eq!(enrolled["claims"][0]["status"], "pending", "{enrolled}");
    assert_eq!(enrolled["driver"]["plates"], json!([]), "{enrolled}");
    let key = enrolled["api_key"].as_str().unwrap().to_owned();
    let (status, stays) = call(&platform, Some(&key), Method::GET, "/v1/me/sessions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stays, json!([]), "stays shown to an unproven claim");
    // (The stays still on record: the answer is empty because they are not this driver's.)
    assert!(!platform.sessions(&world.lot).await.is_empty());
    // A wrong document proves nothing.
    let claim = enrolled["claims"][0]["id"].as_str().unwrap().to_owned();
    let (status, refused) = call(
        &platform,
        Some(&key),
        Method::POST,
        &format!("/v1/me/claims/{claim}/proof"),
        Some(json!({"registration_document": registration_document(never)})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "proof_not_accepted");

    // Enrolled or not, the answer is the same: claims on the held plate and on the never-enrolled
    // one look alike but for their ids, plates and times, at enrolment and when added later.
    let shape = |claim: &Value| {
        let mut claim = claim.clone();
        for field in ["id", "driver_id", "plate", "created_at"] {
            claim.as_object_mut().unwrap().remove(field);
        }
        claim
    };
    let (status_held, on_held) = enrol(&platform, "Prober", held, None).await;
    let (status_never, on_never) = enrol(&platform, "Prober", never, None).await;
    assert_eq!(status_held, status_never);
    assert_eq!(shape(&on_held["claims"][0]), shape(&on_never["claims"][0]));
    let prober = on_never["api_key"].as_str().unwrap();
    let (status_held, added_held) = call(
        &platform,
        Some(prober),
        Method::POST,
        "/v1/me/plates",
        Some(json!({"plate": held})),
    )
    .await;
    assert_eq!(status_held, StatusCode::CREATED, "{added_held}");
    let (_, claims) = call(&platform, Some(prober), Method::GET, "/v1/me/claims", None).await;
    let on_never = claims
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["plate"] == never)
        .unwrap();
    assert_eq!(shape(&added_held), shape(on_never), "{claims}");

    // The real owner claims the plate with the car's papers: it is theirs at once (the stalker
    // never held it), and they too see its stays only from now on.
    let (status, owner) = enrol(
        &platform,
        "Owner",
        plate,
        Some(&registration_document(plate)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{owner}");
    assert_eq!(
        (&owner["claims"][0]["status"], &owner["claims"][0]["proof"]),
        (&json!("granted"), &json!("registration"))
    );
    assert_eq!(owner["driver"]["plates"][0]["plate"], plate);
    let owner_key = owner["api_key"].as_str().unwrap();
    let (_, stays) = call(
        &platform,
        Some(owner_key),
        Method::GET,
        "/v1/me/sessions",
        None,
    )
    .await;
    assert_eq!(
        stays,
        json!([]),
        "stays from before the plate became theirs"
    );

    // The operator rejects the stalker's claim, and the decision is in the audit trail.
    let (status, rejected) = call(
        &platform,
        Some(ADMIN_KEY),
        Method::POST,
        &format!("/v1/claims/{claim}/decision"),
        Some(json!({"decision": "reject", "reason": "no papers"})),
    )
    .await;
    assert_eq!(
        (status, &rejected["status"]),
        (StatusCode::OK, &json!("rejected"))
    );
    let (_, trail) = call(&platform, Some(ADMIN_KEY), Method::GET, "/v1/audit", None).await;
    assert!(
        trail
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "claim_rejected"
                && e["object"] == format!("claims/{claim}")
                && e["reason"] == "no papers"),
        "{trail}"
    );
    platform.stop().await;
}

/// A driver with no papers at hand proves a plate with the receipt of paying at its held exit;
/// a receipt of another plate proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_from_the_plates_held_exit_proves_it_on_sqlite() {
    a_receipt_from_the_plates_held_exit_proves_it(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_from_the_plates_held_exit_proves_it_on_postgres() {
    a_receipt_from_the_plates_held_exit_proves_it(Database::Postgres).await;
}

async fn a_receipt_from_the_plates_held_exit_proves_it(database: Database) {
    let Some(setup) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let plate = "浙Q12121";
    entry
        .decide(&entry.read_at(
            plate,
            Direction::Entry,
            chrono::Utc::now() - chrono::Duration::minutes(40),
        ))
        .await;
    let held = exit.decide(&exit.read(plate, Direction::Exit)).await;
    assert_eq!(held.action, GateAction::Hold);
    let pay_url = url::Url::parse(held.pay_url.as_deref().unwrap()).unwrap();
    let (status, paid) = call(
        &platform,
        None,
        Method::POST,
        pay_url.path(),
        Some(json!({"payment_account": "acct-walk-in"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    let receipt = paid["payment_id"].as_str().unwrap();

    let (_, other) = enrol(&platform, "Other", "浙Q34343", None).await;
    let other_claim = other["claims"][0]["id"].as_str().unwrap();
    let (status, _) = call(
        &platform,
        other["api_key"].as_str(),
        Method::POST,
        &format!("/v1/me/claims/{other_claim}/proof"),
        Some(json!({"receipt": receipt})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another plate's receipt"
    );

    let (status, driver) = call(
        &platform,
        None,
        Method::POST,
        "/v1/drivers",
        Some(
            json!({"name": "Walk-in", "payment_account": "acct-walk-in", "auto_debit_consent": true,
                    "plates": [{"plate": plate, "receipt": receipt}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{driver}");
    assert_eq!(
        (
            &driver["claims"][0]["status"],
            &driver["claims"][0]["proof"]
        ),
        (&json!("granted"), &json!("receipt"))
    );
    // A receipt proves a plate once: shown again (by whoever else got hold of it), it proves
    // nothing.
    let (_, copycat) = enrol(&platform, "Copycat", plate, None).await;
    let copycat_claim = copycat["claims"][0]["id"].as_str().unwrap();
    let (status, _) = call(
        &platform,
        copycat["api_key"].as_str(),
        Method::POST,
        &format!("/v1/me/claims/{copycat_claim}/proof"),
        Some(json!({"receipt": receipt})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a receipt used twice"
    );
    // From now on the car leaves first and pays later.
    entry
        .decide(&entry.read_at(
            plate,
            Direction::Entry,
            chrono::Utc::now() - chrono::Duration::minutes(30),
        ))
        .await;
    let out = exit.decide(&exit.read(plate, Direction::Exit)).await;
    assert_eq!(out.reason, GateReason::BillLater);
    platform.stop().await;
}

/// Enrols a driver with one plate, proven by `document` when given.
async fn enrol(
    platform: &TestPlatform,
    name: &str,
    plate: &str,
    document: Option<&str>,
) -> (StatusCode, Value) {
    let mut claim = json!({"plate": plate});
    if let Some(document) = document {
        claim["registration_document"] = json!(document);
    }
    call(
        platform,
        None,
        Method::POST,
        "/v1/drivers",
        Some(
            json!({"name": name, "plates": [claim], "payment_account": "acct",
                    "auto_debit_consent": true}),
        ),
    )
    .await
}

/// A driver rotates their key: the new key is issued by the old one, the old one is revoked at
/// once, and both steps are in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_rotates_and_revokes_their_own_keys() {
    let setup = Setup::available(Database::Sqlite, Broker::Embedded).unwrap();
    let world = World::new(setup, 10);
    let platform = TestPlatform::start(setup, &world).await;
    let (status, enrolled) = call(
        &platform,
        None,
        Method::POST,
        "/v1/drivers",
        Some(
            json!({"name": "Wu", "plates": [{"plate": "浙N11223"}], "payment_account": "acct-wu",
                    "auto_debit_consent": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let old = enrolled["api_key"].as_str().unwrap().to_owned();
    let (_, keys) = call(&platform, Some(&old), Method::GET, "/v1/me/keys", None).await;
    let old_id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(keys[0]["issued_by"], Value::Null, "enrolment issued it");

    let (status, issued) = call(&platform, Some(&old), Method::POST, "/v1/me/keys", None).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let new = issued["api_key"].as_str().unwrap().to_owned();
    assert_eq!(issued["issued_by"], json!(old_id));
    let (status, _) = call(
        &platform,
        Some(&new),
        Method::DELETE,
        &format!("/v1/me/keys/{old_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&platform, Some(&old), Method::GET, "/v1/me", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&platform, Some(&new), Method::GET, "/v1/me", None)
            .await
            .0,
        StatusCode::OK
    );
    // Another driver cannot revoke this driver's key.
    let (_, other) = call(
        &platform,
        None,
        Method::POST,
        "/v1/drivers",
        Some(
            json!({"name": "Other", "plates": [{"plate": "浙N44556"}], "payment_account": "acct-o",
                    "auto_debit_consent": true}),
        ),
    )
    .await;
    let new_id = issued["id"].as_str().unwrap();
    assert_eq!(
        call(
            &platform,
            other["api_key"].as_str(),
            Method::DELETE,
            &format!("/v1/me/keys/{new_id}"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, trail) = call(
        &platform,
        Some(crate::support::ADMIN_KEY),
        Method::GET,
        "/v1/audit",
        None,
    )
    .await;
    let trail: Vec<(String, String, String)> = trail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["object"].as_str().unwrap().to_owned(),
                e["actor_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(trail.contains(&(
        "key_issued".into(),
        format!("keys/{new_id}"),
        old_id.clone()
    )));
    assert!(trail.contains(&(
        "key_revoked".into(),
        format!("keys/{old_id}"),
        new_id.to_owned()
    )));
    platform.stop().await;
}

/// The driver to bill is fixed when the car leaves: a plate cannot be taken off the account while
/// its car is parked, and taking it off right after the exit (before the charge is made) still
/// leaves the debt with that driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_plate_right_after_the_exit_sheds_no_debt_on_sqlite() {
    removing_the_plate_right_after_the_exit_sheds_no_debt(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_plate_right_after_the_exit_sheds_no_debt_on_postgres() {
    removing_the_plate_right_after_the_exit_sheds_no_debt(Database::Postgres).await;
}

async fn removing_the_plate_right_after_the_exit_sheds_no_debt(database: Database) {
    let Some(setup) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let world = World::new(setup, 10);
    // Charges are made five seconds apart: the plate goes before this car's charge is made.
    let platform = TestPlatform::start_with(setup, &world, |config| {
        config.charging.idle_poll = std::time::Duration::from_secs(5);
    })
    .await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let plate = "浙P97531";
    let (_, enrolled) = call(
        &platform,
        None,
        Method::POST,
        "/v1/drivers",
        Some(
            json!({"name": "Zhao", "plates": [{"plate": plate, "registration_document": registration_document(plate)}],
                    "payment_account": "decline-card", "auto_debit_consent": true}),
        ),
    )
    .await;
    let key = enrolled["api_key"].as_str().unwrap().to_owned();
    entry
        .decide(&entry.read_at(
            plate,
            Direction::Entry,
            chrono::Utc::now() - chrono::Duration::minutes(45),
        ))
        .await;
    // At once, before the stay is on record: the gates' decisions are waited for.
    let path = format!("/v1/me/plates/{plate}");
    let (status, parked) = call(&platform, Some(&key), Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{parked}");
    assert_eq!(parked["error"]["code"], "car_parked", "{parked}");
    let out = exit.decide(&exit.read(plate, Direction::Exit)).await;
    assert_eq!(out.reason, GateReason::BillLater);
    // Off the account the moment the exit is on record, before the charge is made.
    crate::support::eventually(
        std::time::Duration::from_secs(4),
        "the plate removed",
        || async {
            let (status, _) = call(&platform, Some(&key), Method::DELETE, &path, None).await;
            (status == StatusCode::NO_CONTENT).then_some(())
        },
    )
    .await;
    let (_, me) = call(&platform, Some(&key), Method::GET, "/v1/me", None).await;
    assert_eq!(me["plates"], json!([]), "{me}");
    // The declined debit still becomes this driver's invoice.
    let invoices = crate::support::eventually(
        std::time::Duration::from_secs(15),
        "the driver's invoice",
        || async {
            let (_, invoices) =
                call(&platform, Some(&key), Method::GET, "/v1/me/invoices", None).await;
            (!invoices.as_array().unwrap().is_empty()).then_some(invoices)
        },
    )
    .await;
    assert_eq!(invoices[0]["status"], "open", "{invoices}");
    platform.stop().await;
}

/// Leave first, pay later needs a mandate the payment provider confirms: refused, the driver's
/// car pays at the exit; revoked at the bank, the next check ends it for that driver's cars; a
/// new mandate on another account brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_first_needs_a_confirmed_mandate_on_sqlite() {
    leaving_first_needs_a_confirmed_mandate(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_first_needs_a_confirmed_mandate_on_postgres() {
    leaving_first_needs_a_confirmed_mandate(Database::Postgres).await;
}

async fn leaving_first_needs_a_confirmed_mandate(database: Database) {
    let Some(setup) = Setup::available(database, Broker::Embedded) else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start_with(setup, &world, |config| {
        config.mandate_check.every = std::time::Duration::from_millis(300);
    })
    .await;
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let mut visit = async |plate: &str| {
        entry
            .decide(&entry.read_at(
                plate,
                Direction::Entry,
                chrono::Utc::now() - chrono::Duration::minutes(40),
            ))
            .await;
        exit.decide(&exit.read(plate, Direction::Exit)).await.reason
    };
    let enrol_with = async |name: &str, plate: &str, account: &str| {
        let (status, enrolled) = call(
            &platform,
            None,
            Method::POST,
            "/v1/drivers",
            Some(json!({"name": name, "payment_account": account, "auto_debit_consent": true,
                        "plates": [{"plate": plate, "registration_document": registration_document(plate)}]})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{enrolled}");
        enrolled
    };

    let refused = enrol_with("Refusing", "浙S10001", "nomandate-card").await;
    assert_eq!(
        (
            &refused["driver"]["auto_debit"],
            &refused["driver"]["mandate"]
        ),
        (&json!(false), &json!("refused"))
    );
    assert_eq!(visit("浙S10001").await, GateReason::PaymentRequired);

    let lin = enrol_with("Lin", "浙S20002", "acct-lin-mandate").await;
    assert_eq!(
        (&lin["driver"]["auto_debit"], &lin["driver"]["mandate"]),
        (&json!(true), &json!("active"))
    );
    assert_eq!(visit("浙S20002").await, GateReason::BillLater);

    // Lin revokes the mandate at the bank: the next check ends leaving first.
    platform.provider.revoke_mandates("acct-lin-mandate");
    let key = lin["api_key"].as_str().unwrap();
    let me = crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the revoked mandate seen",
        || async {
            let (_, me) = call(&platform, Some(key), Method::GET, "/v1/me", None).await;
            (me["mandate"] == "revoked").then_some(me)
        },
    )
    .await;
    assert_eq!(me["auto_debit"], false, "{me}");
    // The gates hear of it just after the commit `/v1/me` reads: a visit in between still
    // leaves first (and is billed as any). Within a few visits, the exit asks for payment.
    let mut reasons = Vec::new();
    for _ in 0..20 {
        reasons.push(visit("浙S20002").await);
        if reasons.last() == Some(&GateReason::PaymentRequired) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        reasons.last(),
        Some(&GateReason::PaymentRequired),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .rev()
            .skip(1)
            .all(|r| *r == GateReason::BillLater),
        "{reasons:?}"
    );

    // Another account, consent given again: a new mandate, and leaving first again.
    let (status, me) = call(
        &platform,
        Some(key),
        Method::PATCH,
        "/v1/me",
        Some(json!({"payment_account": "acct-lin-new", "auto_debit_consent": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        (&me["auto_debit"], &me["mandate"]),
        (&json!(true), &json!("active"))
    );
    assert_eq!(visit("浙S20002").await, GateReason::BillLater);
    platform.stop().await;
}
