//! The OpenAPI document as a client generator reads it: routes and document cannot drift,
//! filters are query parameters, every `/v1` operation lists the statuses any request can
//! meet, errors are `application/problem+json` with `code` as an enum, and the headers and
//! examples clients rely on are there.

use std::collections::BTreeSet;

use crate::support::*;
use miqat_api::ROUTES;
use miqat_api::error::ERROR_CODES;

async fn document() -> Value {
    let r = Fx::new().get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    r.body
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((path.clone(), method.to_owned(), op.clone()));
            }
        }
    }
    out
}

/// Every route is documented and every documented path is a route; on each path, exactly the
/// documented methods reach a handler (the others answer the router's 405).
#[tokio::test]
async fn routes_and_document_cannot_drift() {
    let doc = document().await;
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let routed: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    assert_eq!(
        routed, documented,
        "routes (left) and OpenAPI paths (right) differ"
    );
    let fx = Fx::new();
    for path in routed {
        let uri = path.replace("{id}", "1");
        for method in METHODS {
            let r = fx
                .send(method.to_uppercase().parse().unwrap(), &uri, &[], None)
                .await;
            let documented = doc["paths"][path].get(method).is_some();
            let routed = !(r.status == StatusCode::METHOD_NOT_ALLOWED
                || r.status == StatusCode::NOT_FOUND && r.body["code"] == "not_found");
            assert_eq!(
                routed, documented,
                "{method} {path}: routed {routed}, documented {documented} ({} {})",
                r.status, r.text
            );
        }
    }
}

#[tokio::test]
async fn filters_are_optional_query_parameters() {
    let doc = document().await;
    let check = |path: &str, method: &str, names: &[&str]| {
        let empty = Vec::new();
        let params = doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or(&empty);
        for name in names {
            let p = params
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap_or_else(|| panic!("{name} missing on {method} {path}"));
            assert_eq!(p["in"], "query", "{name} on {path}");
            assert_ne!(p["required"], true, "{name} on {path}");
        }
        for p in params {
            if p["in"] == "path" {
                assert!(
                    path.contains(&format!("{{{}}}", p["name"].as_str().unwrap())),
                    "path parameter {} is not in {path}",
                    p["name"]
                );
            }
        }
    };
    check(
        "/v1/provinces/{id}/caravans",
        "get",
        &["city", "route", "price_group", "available"],
    );
    check(
        "/v1/admin/reservations",
        "get",
        &["province", "caravan", "status", "offset", "limit"],
    );
    check("/v1/admin/waves", "put", &["allow_wider_cutoff_first"]);
    // Every path parameter of every operation is in its path.
    for (path, method, _) in operations(&doc) {
        check(&path, &method, &[]);
    }
}

#[tokio::test]
async fn every_v1_operation_lists_the_statuses_any_request_can_meet() {
    let doc = document().await;
    for (path, method, op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap();
        if path.starts_with("/v1/") {
            for status in ["413", "429", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{status} on {method} {path}"
                );
            }
            for status in ["429", "503"] {
                assert!(
                    responses[status]["headers"]["Retry-After"].is_object(),
                    "Retry-After on {status} of {method} {path}"
                );
            }
            if op.get("requestBody").is_some() {
                assert!(responses.contains_key("400"), "400 on {method} {path}");
            }
        }
        for (status, response) in responses {
            let content = response["content"].as_object();
            if status.starts_with('4') || status.starts_with('5') {
                let content = content.unwrap_or_else(|| panic!("{status} {method} {path}"));
                let keys: Vec<&String> = content.keys().collect();
                assert_eq!(
                    keys,
                    ["application/problem+json"],
                    "{status} {method} {path}"
                );
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem"
                );
            }
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "no description for {status} of {method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn problem_code_is_an_enum_and_the_server_sends_problem_json() {
    let doc = document().await;
    let code = &doc["components"]["schemas"]["Problem"]["properties"]["code"];
    let listed: Vec<&str> = code["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, ERROR_CODES);
    for contract_code in [
        "malformed_request",
        "invalid_field",
        "invalid_credentials",
        "registration_not_open",
        "receipt_needs_conversion",
        "not_called",
        "province_mismatch",
        "caravan_not_found",
        "reservation_not_found",
        "caravan_full",
        "already_reserved",
        "invalid_transition",
        "body_too_large",
        "rate_limited",
        "overloaded",
    ] {
        assert!(listed.contains(&contract_code), "{contract_code}");
    }
    let fx = Fx::new();
    let r = fx.get("/v1/caravans/nope").await;
    assert_problem(&r, StatusCode::NOT_FOUND, "caravan_not_found");
    assert!(listed.contains(&r.body["code"].as_str().unwrap()));
}

#[tokio::test]
async fn headers_formats_and_examples_are_documented() {
    let doc = document().await;
    let list = &doc["paths"]["/v1/provinces/{id}/caravans"]["get"];
    for status in ["200", "304"] {
        assert!(
            list["responses"][status]["headers"]["ETag"].is_object(),
            "{status}"
        );
    }
    assert!(
        list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "If-None-Match" && p["in"] == "header")
    );
    let reserve = &doc["paths"]["/v1/reservations"]["post"]["responses"];
    assert!(reserve["201"]["headers"]["Location"].is_object());
    assert!(reserve["201"]["headers"]["Idempotent-Replayed"].is_object());
    let examples = |status: &str, name: &str| {
        reserve[status]["content"]["application/problem+json"]["examples"][name]["value"].clone()
    };
    assert_eq!(examples("409", "caravan_full")["code"], "caravan_full");
    assert_eq!(
        examples("403", "registration_not_open")["code"],
        "registration_not_open"
    );
    let schemas = &doc["components"]["schemas"];
    for field in ["created_at", "updated_at", "deadline"] {
        assert_eq!(
            schemas["Reservation"]["properties"][field]["format"], "date-time",
            "{field}"
        );
    }
    assert_eq!(
        schemas["Problem"]["properties"]["opens_at"]["format"],
        "date-time"
    );
    for op in ["delete", "get"] {
        let ok = &doc["paths"]["/v1/reservations/{id}"][op]["responses"]["200"];
        assert_eq!(
            ok["headers"]["Idempotent-Replayed"].is_object(),
            op == "delete",
            "{op}"
        );
    }
}

/// The examples in the document are answers the server really gives, field for field.
#[tokio::test]
async fn the_examples_have_the_fields_of_real_answers() {
    let doc = document().await;
    let reserve = &doc["paths"]["/v1/reservations"]["post"]["responses"];
    let example = |status: &str, name: &str| {
        reserve[status]["content"]["application/problem+json"]["examples"][name]["value"].clone()
    };
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };

    let fx = Fx::new();
    fx.reserve_ok(&a(0), "a2").await;
    let full = fx.reserve(&a(1), "a2").await;
    assert_problem(&full, StatusCode::CONFLICT, "caravan_full");
    assert_eq!(keys(&example("409", "caravan_full")), keys(&full.body));
    assert_eq!(
        keys(&example("409", "caravan_full")["alternatives"][0]),
        keys(&full.body["alternatives"][0])
    );

    let early = Fx::build(season_opening_at(T0 + 60_000), config());
    let closed = early.reserve(&a(0), "a1").await;
    assert_problem(&closed, StatusCode::FORBIDDEN, "registration_not_open");
    assert_eq!(
        keys(&example("403", "registration_not_open")),
        keys(&closed.body)
    );
}
