//! The HTTP surface of a running `cartpulse demo` without a browser: bearer-token
//! protection, the open health endpoints and dashboard page, and refusal of oversized
//! request bodies, with the pipeline running on through all of it.

mod live;

use live::{get, request, wait_for, Demo};
use std::time::Duration;

const TOKEN: &str = "secret";

/// Waits until the demo has processed more events than `before`.
fn events_keep_increasing(demo: &Demo, before: u64) -> u64 {
    wait_for(
        "the pipeline to keep processing events",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let now = demo.events();
            if now > before {
                Ok(now)
            } else {
                Err(format!("events still {now} (before: {before})"))
            }
        },
    )
}

#[test]
fn token_protects_the_api_but_not_health_or_the_dashboard_page() {
    let demo = Demo::start(&["--rate", "500", "--token", TOKEN]);
    let a = demo.addr;
    let right = format!("Bearer {TOKEN}");
    let before = demo.events();

    for path in [
        "/api/metrics",
        "/api/windows",
        "/api/state",
        "/api/products/held",
        "/api/carts/u000001",
        "/api/stream",
        "/metrics",
    ] {
        let r = get(a, path, &[]).expect(path);
        assert_eq!(r.status, 401, "{path} without a token: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        assert_eq!(r.json()["error"], "bearer token required", "{path}");

        let r = get(a, path, &[("Authorization", "Bearer wrong")]).expect(path);
        assert_eq!(r.status, 403, "{path} with a wrong token: {}", r.text());
        // a token that is a prefix of the right one is just as wrong
        let r = get(a, path, &[("Authorization", "Bearer secre")]).expect(path);
        assert_eq!(r.status, 403, "{path} with a prefix of the token");
        // not a bearer token at all
        let r = get(a, path, &[("Authorization", "Basic c2VjcmV0")]).expect(path);
        assert_eq!(r.status, 401, "{path} with Basic auth");
    }

    let r = get(a, "/api/metrics", &[("Authorization", &right)]).expect("/api/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["totals"]["events"].as_u64().is_some(),
        "{}",
        r.text()
    );
    // the scheme name is case-insensitive (RFC 9110)
    let r = get(a, "/api/metrics", &[("Authorization", "bearer secret")]).expect("bearer");
    assert_eq!(r.status, 200, "lower-case scheme: {}", r.text());
    let r = get(a, "/metrics", &[("Authorization", &right)]).expect("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("cartpulse_events_decoded_total"));

    // open: liveness, readiness and the static dashboard page (its API calls carry the
    // token from the URL fragment)
    let r = get(a, "/healthz", &[]).expect("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    wait_for(
        "/readyz to say ready",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let r = get(a, "/readyz", &[]).map_err(|e| e.to_string())?;
            if r.status == 200 && r.json()["ready"] == true {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        },
    );
    let r = get(a, "/", &[]).expect("/");
    assert_eq!(
        r.status,
        200,
        "dashboard page without a token: {}",
        r.text()
    );
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert!(r.text().contains("id=\"t-alerts\""));

    // a burst of refused requests does not disturb the pipeline
    for _ in 0..200 {
        let r = get(a, "/api/metrics", &[("Authorization", "Bearer nope")]).expect("burst");
        assert_eq!(r.status, 403);
    }
    events_keep_increasing(&demo, before);
    assert!(
        !demo.proc.log().contains("panicked"),
        "{}",
        demo.proc.log_tail(20)
    );
}

#[test]
fn oversized_request_bodies_are_refused_and_the_server_keeps_serving() {
    let demo = Demo::start(&["--rate", "500", "--token", TOKEN]);
    let a = demo.addr;
    let right = format!("Bearer {TOKEN}");
    let body = vec![b'x'; 2 << 20]; // 2 MiB, twice the default limit
    let before = demo.events();

    // no route takes a body: a POST is refused as such (or as too large), whatever size
    let r = request(
        a,
        "POST",
        "/api/metrics",
        &[
            ("Authorization", &right),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .expect("POST 2 MiB");
    assert!(
        r.status == 405 || r.status == 413,
        "POST of 2 MiB to /api/metrics: {} {}",
        r.status,
        r.text()
    );
    // without a token the refusal is the token's
    let r = request(a, "POST", "/api/metrics", &[], &body).expect("POST without token");
    assert_eq!(r.status, 401, "{}", r.text());
    // a body on a GET is never read and does no harm
    let r = request(
        a,
        "GET",
        "/api/metrics",
        &[("Authorization", &right)],
        &body,
    )
    .expect("GET with 2 MiB body");
    assert!(
        [200, 413].contains(&r.status),
        "GET with a 2 MiB body: {} {}",
        r.status,
        r.text()
    );

    let r = get(a, "/healthz", &[]).expect("/healthz after the large requests");
    assert_eq!(r.status, 200);
    let r = get(a, "/api/metrics", &[("Authorization", &right)]).expect("/api/metrics");
    assert_eq!(r.status, 200);
    events_keep_increasing(&demo, before);
}
