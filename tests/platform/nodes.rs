//! Several gateway nodes, one city (issue 15): two `parkflow run --node-id` processes share the
//! demo city's lots on one PostgreSQL and one Mosquitto; one is killed (-9) during the
//! simulator's traffic, the other takes its lots over within 5 s, the killed one comes back and
//! takes a share again. The simulator's `--verify` passes (nothing lost, nothing twice), and the
//! audit is clean — including its check of the lease history that no lot was ever owned by two
//! nodes at once. This is `parkflow chaos failover --quick`, run as a test.

/// Needs PostgreSQL and a `mosquitto` binary (the scenario starts its own broker): runs when
/// `PARKFLOW_TEST_POSTGRES_URL` and `PARKFLOW_TEST_MQTT_URL` are set, as in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_killed_during_traffic_lose_nothing() {
    let (Ok(postgres), Ok(_)) = (
        std::env::var("PARKFLOW_TEST_POSTGRES_URL"),
        std::env::var("PARKFLOW_TEST_MQTT_URL"),
    ) else {
        eprintln!("skipped: PARKFLOW_TEST_POSTGRES_URL and PARKFLOW_TEST_MQTT_URL not set");
        return;
    };
    parkflow::chaos::parts::use_binary(env!("CARGO_BIN_EXE_parkflow"));
    assert!(
        parkflow::chaos::run("failover", true, &postgres)
            .await
            .unwrap(),
        "the failover scenario failed (its report is above)"
    );
}
