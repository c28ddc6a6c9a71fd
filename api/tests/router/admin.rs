//! The operator-only endpoints: the token they need, the reservations listing and CSV
//! export, the stats.

use crate::support::*;

#[tokio::test]
async fn operator_endpoints_need_the_token() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    let event_uri = format!("/v1/reservations/{id}/events");
    let event_body = json!({"kind": "documents_received"}).to_string();
    let waves_body = json!([{"name": "main", "receipts_until": jalali_day(CUTOFF_DAY),
                             "opens_at": format_rfc3339_utc(T0)}])
    .to_string();
    let requests: Vec<(Method, &str, Option<&str>)> = vec![
        (Method::POST, &event_uri, Some(&event_body)),
        (Method::GET, "/v1/admin/reservations", None),
        (Method::GET, "/v1/admin/stats", None),
        (Method::PUT, "/v1/admin/waves", Some(&waves_body)),
    ];
    for (method, uri, body) in &requests {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer "),
            Some("secret"),
            Some("Basic c2VjcmV0"),
            Some("Bearer secret2"),
            Some("bearer secre"),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let r = fx.send(method.clone(), uri, &headers, *body).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {auth:?}: {}",
                r.text
            );
            assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let r = fx.as_operator(method.clone(), uri, *body).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {uri}: {}", r.text);
    }
    // An applicant's credentials are no operator token.
    let holder_a0 = a(0);
    let mut headers = creds(&holder_a0);
    headers.push(("authorization", "Bearer t0"));
    let r = fx
        .send(Method::GET, "/v1/admin/stats", &headers, None)
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    // Without a configured token the operator endpoints are closed to everyone.
    let closed = Fx::with_config(ApiConfig {
        operator_token: None,
        ..config()
    });
    for auth in ["Bearer ", "Bearer secret"] {
        let r = closed
            .send(
                Method::GET,
                "/v1/admin/stats",
                &[("authorization", auth)],
                None,
            )
            .await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

/// Five reservations for the admin reads, in creation order: a0 and a1 hold a1, a2 is
/// confirmed in a2, b0 cancelled b1, c0 holds c1.
async fn admin_fixture() -> (Fx, Vec<String>) {
    let fx = Fx::new();
    let mut ids = Vec::new();
    ids.push(fx.reserve_ok(&a(0), "a1").await);
    ids.push(fx.reserve_ok(&a(1), "a1").await);
    ids.push(fx.reserve_ok(&a(2), "a2").await);
    ids.push(fx.reserve_ok(&b(0), "b1").await);
    ids.push(fx.reserve_ok(&c(0), "c1").await);
    for kind in [
        "documents_received",
        "first_payment_received",
        "medical_approved",
        "final_payment_received",
    ] {
        assert_eq!(fx.event(&ids[2], kind).await.status, StatusCode::OK);
    }
    assert_eq!(fx.cancel(&b(0), &ids[3]).await.status, StatusCode::OK);
    (fx, ids)
}

#[tokio::test]
async fn admin_reservations_filter_and_page() {
    let (fx, ids) = admin_fixture().await;
    let list = |q: String| {
        let fx = &fx;
        async move {
            let r = fx
                .as_operator(Method::GET, &format!("/v1/admin/reservations{q}"), None)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.text);
            assert_eq!(r.header("content-type"), Some("application/json"));
            r.body
        }
    };
    let all = list(String::new()).await;
    assert_eq!(ids_of(&all["items"]), ids);
    assert_eq!(all["offset"], 0);
    assert_eq!(all["limit"], 1_000);
    assert!(all["next_offset"].is_null());
    let first = &all["items"][0];
    for member in [
        "id",
        "national_id",
        "caravan_id",
        "province_id",
        "status",
        "stage",
        "deadline",
        "deadline_jalali",
        "created_at",
        "updated_at",
    ] {
        assert!(first.get(member).is_some(), "{member} missing: {first}");
    }

    assert_eq!(ids_of(&list("?province=1".into()).await["items"]), ids[..4]);
    assert_eq!(ids_of(&list("?province=2".into()).await["items"]), ids[4..]);
    assert_eq!(ids_of(&list("?caravan=a1".into()).await["items"]), ids[..2]);
    assert_eq!(
        ids_of(&list("?status=held".into()).await["items"]),
        [ids[0].clone(), ids[1].clone(), ids[4].clone()]
    );
    assert_eq!(
        ids_of(&list("?status=confirmed".into()).await["items"]),
        [ids[2].clone()]
    );
    assert_eq!(
        ids_of(&list("?status=cancelled&province=1".into()).await["items"]),
        [ids[3].clone()]
    );
    assert_eq!(
        ids_of(&list("?status=held&province=1&caravan=a1".into()).await["items"]),
        ids[..2]
    );
    assert_eq!(list("?status=expired".into()).await["items"], json!([]));

    // Pages of two.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page = list(format!("?limit=2&offset={offset}")).await;
        assert_eq!(page["offset"], offset);
        assert_eq!(page["limit"], 2);
        seen.extend(ids_of(&page["items"]));
        match page["next_offset"].as_u64() {
            Some(next) => {
                assert_eq!(next, offset as u64 + 2);
                offset = next as usize;
            }
            None => break,
        }
        assert!(seen.len() <= ids.len(), "paging never ends");
    }
    assert_eq!(seen, ids);
    let page = list("?offset=100".into()).await;
    assert_eq!(page["items"], json!([]));
    assert!(page["next_offset"].is_null());
    // The page size is capped.
    assert_eq!(list("?limit=1000000".into()).await["limit"], 10_000);
}

#[tokio::test]
async fn admin_reservations_export_csv_with_a_header_row() {
    let (fx, ids) = admin_fixture().await;
    let auth = format!("Bearer {TOKEN}");
    let r = fx
        .send(
            Method::GET,
            "/v1/admin/reservations",
            &[("authorization", &auth), ("accept", "text/csv")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(
        lines[0],
        "id,national_id,caravan_id,province_id,status,stage,deadline,created_at,updated_at,end_reason,transferred_from"
    );
    assert_eq!(lines.len(), 1 + ids.len(), "{}", r.text);
    for (line, id) in lines[1..].iter().zip(&ids) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 11, "{line}");
        assert_eq!(fields[0], id);
    }
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(first[1], a(0).national_id);
    assert_eq!(first[2], "a1");
    assert_eq!(first[3], "1");
    assert_eq!(first[4], "held");
    assert_eq!(first[5], "documents");
    assert_eq!(first[6], format_rfc3339_utc(T0 + DOCUMENTS_MS));
    let cancelled: Vec<&str> = lines[4].split(',').collect();
    assert_eq!(cancelled[4], "cancelled");
    assert_eq!(cancelled[9], "holder_cancelled");

    // Filters apply to the export too.
    let r = fx
        .send(
            Method::GET,
            "/v1/admin/reservations?status=confirmed",
            &[
                ("authorization", &auth),
                ("accept", "text/csv, application/json;q=0.5"),
            ],
            None,
        )
        .await;
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.text);
    assert!(lines[1].starts_with(&ids[2]));
}

#[tokio::test]
async fn admin_reservations_with_bad_filters_are_422() {
    let fx = Fx::new();
    for q in [
        "?province=9",
        "?province=north",
        "?caravan=zz",
        "?status=pending",
        "?limit=-1",
        "?offset=x",
        "?colour=red",
    ] {
        let r = fx
            .as_operator(Method::GET, &format!("/v1/admin/reservations{q}"), None)
            .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    }
}

#[tokio::test]
async fn admin_stats_count_seats_and_reservations() {
    let (fx, _ids) = admin_fixture().await;
    let stats = || async { fx.as_operator(Method::GET, "/v1/admin/stats", None).await };
    let r = stats().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({
            "seats_total": 13,
            "seats_free": 9,
            "reservations": {"offered": 0, "held": 3, "confirmed": 1, "cancelled": 1,
                             "expired": 0, "rejected": 0},
            "waiting": 0,
            "expirations": 0,
            "log_records": 0,
            "log_records_since_start": 0,
            "log_fsyncs": 0,
        })
    );
    // City B full again, one waiter; then every hold's documents deadline passes: the held
    // a0, a1, c0 and b1 expire, b2 gets b1's seat as an offer, the confirmed a2 stays.
    fx.reserve_ok(&b(1), "b1").await;
    assert_eq!(fx.join(&b(2)).await.status, StatusCode::CREATED);
    let r = stats().await;
    assert_eq!(r.body["waiting"], 1);
    assert_eq!(r.body["reservations"]["held"], 4);
    assert_eq!(r.body["seats_free"], 8);
    assert_eq!(fx.advance_and_expire(DOCUMENTS_MS), 4);
    let r = stats().await;
    assert_eq!(
        r.body["reservations"],
        json!({"offered": 1, "held": 0, "confirmed": 1, "cancelled": 1, "expired": 4,
               "rejected": 0})
    );
    assert_eq!(r.body["waiting"], 0);
    assert_eq!(r.body["expirations"], 4);
    assert_eq!(r.body["seats_free"], 11);
}

#[tokio::test]
async fn admin_stats_log_counters_continue_after_a_restart() {
    use miqat_engine::wal::{MemStorage, Storage};
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let start = || {
        let catalog = catalog();
        let storage: Arc<dyn Storage> = Arc::new(storage.clone());
        let (engine, _) = Engine::open(
            Arc::clone(&catalog),
            season_opening_at(T0),
            Arc::new(clock.clone()),
            storage,
            EngineConfig::default(),
        )
        .unwrap();
        let state = AppState::new(catalog, config(), None);
        state.set_engine(Arc::clone(&engine));
        Fx {
            app: app(state),
            engine,
            clock: clock.clone(),
        }
    };
    let stats = |fx: &Fx| {
        let fx_app = fx.app.clone();
        async move {
            let auth = format!("Bearer {TOKEN}");
            let r = send(
                &fx_app,
                Method::GET,
                "/v1/admin/stats",
                &[("authorization", &auth)],
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            r.body
        }
    };
    let fx = start();
    fx.reserve_ok(&a(0), "a1").await;
    let id = fx.reserve_ok(&b(0), "b1").await;
    assert_eq!(fx.cancel(&b(0), &id).await.status, StatusCode::OK);
    let before = stats(&fx).await;
    assert_eq!(before["log_records"], 3);
    assert_eq!(before["log_records_since_start"], 3);
    fx.engine.shutdown().unwrap();
    drop(fx);
    let fx = start();
    let after = stats(&fx).await;
    assert_eq!(after["log_records"], 3, "{after}");
    assert_eq!(after["log_records_since_start"], 0, "{after}");
    fx.reserve_ok(&a(1), "a1").await;
    assert_eq!(stats(&fx).await["log_records"], 4);
}
