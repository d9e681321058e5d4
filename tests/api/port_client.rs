//! The Port client against the fake: rate limits, refusals, bulk writes.

use std::time::Duration;

use port_runner::domain::{WriteMode, WriteResult};
use port_runner::port::{PortClient, PortError, RetryPolicy};
use serde_json::{json, Value};

use crate::fake_port::FakePort;

fn client(fake: &FakePort) -> PortClient {
    let retry = RetryPolicy {
        max_retries: 3,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(2),
    };
    fake.client(retry, Duration::from_secs(5))
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_until_it_goes_through() {
    let fake = FakePort::start().await;
    let port = client(&fake);
    fake.fail_with_retry_after("POST", "/runs/r_1/logs", 429, 2, Some("0"));
    port.add_run_log("r_1", "hello").await.unwrap();
    // How long it waits is unit-tested (retry_delay); here: it retried and got through.
    assert_eq!(fake.requests_to("POST", "/runs/r_1/logs").len(), 3);
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_surfaces_ports_message() {
    let fake = FakePort::start().await;
    let port = client(&fake);
    let err = port.add_run_log("r_1", "").await;
    assert!(err.is_ok(), "empty messages are fine");
    let err = port
        .upsert_entity(
            "service",
            &json!({"title": "no identifier"}),
            WriteMode::Replace,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Port refused the request (422): identifier is required (invalid_request)"
    );
    assert_eq!(
        fake.requests_to("POST", "/blueprints/service/entities")
            .len(),
        1
    );
}

#[tokio::test]
async fn persistent_5xx_ends_as_a_transient_error_after_the_retry_cap() {
    let fake = FakePort::start().await;
    let port = client(&fake);
    fake.fail("GET", "/blueprints/service", 503, 100);
    let err = port.get_blueprint("service").await.unwrap_err();
    assert!(matches!(err, PortError::Transient { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(
        fake.requests_to("GET", "/blueprints/service").len(),
        4,
        "1 try + 3 retries"
    );
}

#[tokio::test]
async fn bulk_upserts_go_twenty_at_a_time_and_map_partial_failures_back() {
    let fake = FakePort::start().await;
    let port = client(&fake);
    let entities: Vec<Value> = (0..45)
        .map(|i| {
            let mut e = json!({"identifier": format!("svc-{i}"), "properties": {}});
            if i == 7 || i == 33 {
                e["properties"]["__reject"] = json!(true);
            }
            e
        })
        .collect();
    let results = port
        .bulk_upsert("service", &entities, WriteMode::Replace, Some("r_9"))
        .await
        .unwrap();
    assert_eq!(results.len(), 45);
    let calls = fake.requests_to("POST", "/blueprints/service/entities/bulk");
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.query == "upsert=true&run_id=r_9"));
    for (i, result) in results.iter().enumerate() {
        match result {
            WriteResult::Failed {
                identifier, status, ..
            } => {
                assert!(i == 7 || i == 33, "{i} failed");
                assert_eq!(identifier.as_deref(), Some(format!("svc-{i}").as_str()));
                assert_eq!(*status, Some(422));
            }
            WriteResult::Ok {
                identifier,
                created,
            } => {
                assert_eq!(identifier, &format!("svc-{i}"));
                assert!(created);
            }
        }
    }
    assert!(fake.entity("service", "svc-44").is_some());
}

#[tokio::test]
async fn a_chunk_refused_as_a_whole_fails_only_its_entities() {
    let fake = FakePort::start().await;
    let port = client(&fake);
    fake.fail("POST", "/entities/bulk", 400, 1);
    let entities: Vec<Value> = (0..25)
        .map(|i| json!({"identifier": format!("e{i}")}))
        .collect();
    let results = port
        .bulk_upsert("service", &entities, WriteMode::Merge, None)
        .await
        .unwrap();
    assert!(results[..20]
        .iter()
        .all(|r| matches!(r, WriteResult::Failed { .. })));
    assert!(results[20..]
        .iter()
        .all(|r| matches!(r, WriteResult::Ok { .. })));
}

#[tokio::test]
async fn deleting_a_missing_entity_is_not_an_error_and_search_filters_by_blueprint() {
    let fake = FakePort::start().await;
    let port = client(&fake);
    port.upsert_entity(
        "service",
        &json!({"identifier": "a"}),
        WriteMode::Replace,
        None,
    )
    .await
    .unwrap();
    port.upsert_entity(
        "team",
        &json!({"identifier": "t"}),
        WriteMode::Replace,
        None,
    )
    .await
    .unwrap();
    let found = port
        .search_entities(&json!({"combinator": "and", "rules": [{"property": "$blueprint", "operator": "=", "value": "service"}]}))
        .await
        .unwrap();
    assert_eq!(found, vec![json!({"identifier": "a"})]);
    assert!(port.delete_entity("service", "a", None).await.unwrap());
    assert!(!port.delete_entity("service", "a", None).await.unwrap());
    assert_eq!(port.get_blueprint("nope").await.unwrap(), None);
    let blueprint =
        json!({"identifier": "service", "title": "Service", "schema": {"properties": {}}});
    fake.add_blueprint(blueprint.clone());
    assert_eq!(
        port.get_blueprint("service").await.unwrap(),
        Some(blueprint)
    );
}

#[tokio::test]
async fn the_agent_protocol_s_answers_are_read_for_what_they_mean() {
    let fake = FakePort::start().await;
    let port = client(&fake);
    fake.seed_pending("r_agent", json!({"action": {"identifier": "echo"}}));
    let runs = port.claim_pending_runs(5).await.unwrap();
    assert_eq!(runs.len(), 1);
    // A lease that covers journaling and acknowledging, as Ocean sends one.
    assert_eq!(fake.claim_leases(), [Some(Duration::from_secs(120))]);
    let ids = ["r_agent".to_owned()];
    assert_eq!(port.ack_runs(&ids).await.unwrap(), 1);
    // A retried ack whose first attempt got through: Port's 409 means "already acknowledged".
    assert_eq!(port.ack_runs(&ids).await.unwrap(), 1);

    let fin = port_runner::port::RunPatch {
        status: Some(port_runner::port::RunStatus::Success),
        status_label: None,
        summary: Some("done".into()),
        link: None,
    };
    port.patch_run("r_agent", &fin).await.unwrap();
    // A finished run: its PATCH is 409, a log line 422 `run_exhausted`; neither is retried.
    let again = port.patch_run("r_agent", &fin).await.unwrap_err();
    assert!(
        matches!(again, PortError::Invalid { status: 409, .. }),
        "{again}"
    );
    let late = port.add_run_log("r_agent", "too late").await.unwrap_err();
    assert!(late.is_run_closed(), "{late}");
    assert_eq!(fake.requests_to("POST", "/runs/r_agent/logs").len(), 1);
    assert_eq!(fake.closed_logs(), 1);
}
