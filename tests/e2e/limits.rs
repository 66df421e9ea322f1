//! Per-client limits through the real binary: the built-in plugin `rate-limit` with
//! ingress-nginx's annotations `limit-rps`, `limit-rpm`, `limit-burst-multiplier`,
//! `limit-connections`, `limit-allowlist` / `limit-whitelist`, `limit-rate` and
//! `limit-rate-after`, and the flags `--limit-req-status-code` / `--limit-conn-status-code`.
//!
//! The client is the address the request edge computed; every test trusts loopback's
//! `X-Forwarded-For`, so one test process can be many clients. Rates are asserted as counts
//! within generous bands (a burst is `rate × multiplier + 1` at once, then one per interval,
//! and a loaded machine may let an interval or two pass during a volley); the only time
//! asserted is a lower bound on a bandwidth-limited download. A refused request must never
//! reach the backend, which [`Slow`] counts.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::StatusCode;
use serde_json::Value;

use crate::harness::backend::several;
use crate::harness::process::RELOAD_LIMIT;
use crate::harness::slow::{Slow, pattern};
use crate::harness::{Conn, Ingress, Manifests, Req, Resp, Wasmgress, prefix};

const RPS: &str = "nginx.ingress.kubernetes.io/limit-rps";
const RPM: &str = "nginx.ingress.kubernetes.io/limit-rpm";
const BURST: &str = "nginx.ingress.kubernetes.io/limit-burst-multiplier";
const CONNECTIONS: &str = "nginx.ingress.kubernetes.io/limit-connections";
const ALLOWLIST: &str = "nginx.ingress.kubernetes.io/limit-allowlist";
const WHITELIST: &str = "nginx.ingress.kubernetes.io/limit-whitelist";
const RATE: &str = "nginx.ingress.kubernetes.io/limit-rate";
const RATE_AFTER: &str = "nginx.ingress.kubernetes.io/limit-rate-after";

/// Trust loopback (where the tests connect from) to say who the client is.
const TRUST_LOOPBACK: [&str; 3] = [
    "--use-forwarded-headers",
    "--proxy-real-ip-cidr",
    "127.0.0.1/32",
];

/// An Ingress `name` for each of `hosts`, everything to Service `service`, with `annotations`.
fn ingress(name: &str, hosts: &[&str], service: &str, annotations: &[(&str, &str)]) -> Value {
    let with = annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v));
    hosts
        .iter()
        .fold(with, |ing, host| {
            ing.rule(Some(host), &[prefix("/", service)])
        })
        .build()
}

/// The slow backend "app" and a folder holding it and `ingresses` (in `ingress.yaml`).
async fn app_with(ingresses: &[Value]) -> (Slow, Manifests) {
    let app = Slow::start("app").await;
    let m = Manifests::new();
    m.write("app.yaml", &app.objects());
    m.write("ingress.yaml", ingresses);
    (app, m)
}

/// `GET http://host/path` from client `client` (a trusted `X-Forwarded-For`).
fn from(client: &str, host: &str, path: &str) -> Req {
    Req::get(host, path).header("x-forwarded-for", client)
}

/// Sends `n` requests at once, each on its own connection, and returns the answers.
async fn volley(gw: &Wasmgress, req: &Req, n: usize) -> Vec<Resp> {
    join_all((0..n).map(|_| gw.send(req))).await
}

/// How many of `answers` have status `status`.
fn count(answers: &[Resp], status: u16) -> usize {
    answers.iter().filter(|r| r.status == status).count()
}

/// Every status of `answers` other than 200 and `refused`, summarised.
fn unexpected(answers: &[Resp], refused: u16) -> Vec<String> {
    answers
        .iter()
        .filter(|r| r.status != 200 && r.status != refused)
        .map(Resp::summary)
        .collect()
}

/// `limit-rps: 2` with the default multiplier 5: a volley of 40 from one client gets the burst
/// (2 × 5 + 1 = 11) and perhaps an interval's worth more, the rest 503, and only the admitted
/// requests reach the backend; another client is not affected; the limit refills with time.
#[tokio::test]
async fn limit_rps_serves_the_burst_then_refuses_with_503() {
    let (app, m) = app_with(&[ingress("app", &["app.test"], "app", &[(RPS, "2")])]).await;
    let gw = Wasmgress::start(&m, &TRUST_LOOPBACK).await;

    let answers = volley(&gw, &from("203.0.113.1", "app.test", "/"), 40).await;
    let burst_end = Instant::now();
    let passed = count(&answers, 200);
    assert!(
        (10..=16).contains(&passed),
        "limit-rps 2 × burst multiplier 5: expected about 11 of 40 at once, {passed} passed"
    );
    assert_eq!(
        count(&answers, 503),
        40 - passed,
        "every refusal is 503 (--limit-req-status-code's default); others: {:?}",
        unexpected(&answers, 503)
    );
    assert_eq!(
        app.arrived(),
        passed,
        "the backend saw exactly the admitted requests"
    );

    // Limits are per client: another address has its whole burst.
    let r = gw.send(&from("203.0.113.2", "app.test", "/")).await;
    assert_eq!(r.status, 200, "another client: {}", r.summary());
    assert_eq!(r.backend().as_deref(), Some("app"));

    // Refusals are not a ban: at 2 per second, a second later a request or two passes again,
    // and no more than the time allows (bounded by the time that really went by).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answers = volley(&gw, &from("203.0.113.1", "app.test", "/"), 10).await;
    let refilled = 2.0 * burst_end.elapsed().as_secs_f64();
    let passed = count(&answers, 200);
    assert!(
        passed >= 1 && passed as f64 <= refilled + 3.0,
        "after {:.1} s at 2 per second, {passed} of 10 passed",
        refilled / 2.0
    );
}

/// `--limit-req-status-code 429`: requests over the rate are answered 429 instead of 503.
#[tokio::test]
async fn limit_req_status_code_sets_the_refusal() {
    let (app, m) = app_with(&[ingress("app", &["app.test"], "app", &[(RPS, "1")])]).await;
    let mut args = TRUST_LOOPBACK.to_vec();
    args.extend(["--limit-req-status-code", "429"]);
    let gw = Wasmgress::start(&m, &args).await;

    let answers = volley(&gw, &from("203.0.113.1", "app.test", "/"), 20).await;
    let passed = count(&answers, 200);
    assert!(
        (5..=10).contains(&passed),
        "limit-rps 1 × 5: expected about 6 of 20, {passed} passed"
    );
    assert_eq!(
        count(&answers, 429),
        20 - passed,
        "every refusal is 429; others: {:?}",
        unexpected(&answers, 429)
    );
    assert_eq!(app.arrived(), passed);
}

/// `limit-whitelist` (the old name) and `limit-allowlist`: a client inside the list is never
/// limited (40 of 40 pass), while one outside it on the same Ingress is.
#[tokio::test]
async fn allowlisted_clients_are_never_limited() {
    let (app, m) = app_with(&[
        ingress(
            "old-name",
            &["old.test"],
            "app",
            &[(RPS, "1"), (WHITELIST, "10.0.0.0/8, 192.0.2.7")],
        ),
        ingress(
            "new-name",
            &["new.test"],
            "app",
            &[(RPS, "1"), (ALLOWLIST, "10.0.0.0/8, 192.0.2.7")],
        ),
    ])
    .await;
    let gw = Wasmgress::start(&m, &TRUST_LOOPBACK).await;

    for host in ["old.test", "new.test"] {
        for client in ["10.1.2.3", "192.0.2.7"] {
            let answers = volley(&gw, &from(client, host, "/"), 40).await;
            assert_eq!(
                count(&answers, 200),
                40,
                "{client} is in {host}'s list: never limited; others: {:?}",
                unexpected(&answers, 200)
            );
        }
        // The limit is on for everybody else (1 × 5 + 1 at once).
        let answers = volley(&gw, &from("203.0.113.1", host, "/"), 20).await;
        assert!(
            count(&answers, 503) >= 8,
            "{host}: a client outside the list is limited: {} of 20 refused",
            count(&answers, 503)
        );
    }
    // 2 hosts × 2 exempt clients × 40, plus the outsiders' admitted requests.
    assert!(app.arrived() >= 160, "{}", app.arrived());
}

/// `limit-connections: 1`: while a client's request is held open by the backend, its second
/// request gets 503 without reaching the backend, another client passes, and once the first
/// completes the client passes again.
#[tokio::test]
async fn limit_connections_counts_requests_in_progress() {
    let (app, m) = app_with(&[ingress("app", &["app.test"], "app", &[(CONNECTIONS, "1")])]).await;
    let gw = Wasmgress::start(&m, &TRUST_LOOPBACK).await;

    let mut held: Conn = gw.h1().await;
    let first =
        tokio::spawn(async move { held.send(&from("203.0.113.1", "app.test", "/hold")).await });
    app.wait_holding(1).await;
    let arrived = app.arrived();

    let r = gw.send(&from("203.0.113.1", "app.test", "/")).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a second request in progress from the same client: {}",
        r.summary()
    );
    assert_eq!(
        app.arrived(),
        arrived,
        "the refused request reached the backend"
    );

    let r = gw.send(&from("203.0.113.2", "app.test", "/")).await;
    assert_eq!(r.status, 200, "another client: {}", r.summary());

    app.release();
    let r = first
        .await
        .expect("held request task")
        .unwrap_or_else(|e| panic!("the held request failed: {e}"));
    assert_eq!(r.status, 200, "the held request: {}", r.summary());

    // The slot is freed when the proxy drops the response, which may be a moment after the
    // client read its last byte: ask a few times, not once.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = gw.send(&from("203.0.113.1", "app.test", "/")).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first request completed, yet the same client is still refused: {}",
            r.summary()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `limit-rate: 32` (KiB/s) after `limit-rate-after: 0`: a 128 KiB answer takes about 4 s
/// (asserted: at least 1.5 s) and arrives whole; the same answer on an unlimited Ingress
/// arrives whole too.
#[tokio::test]
async fn limit_rate_slows_the_response() {
    const SIZE: usize = 128 * 1024;
    let (_app, m) = app_with(&[
        ingress(
            "slow",
            &["slow.test"],
            "app",
            &[(RATE, "32"), (RATE_AFTER, "0")],
        ),
        ingress("fast", &["fast.test"], "app", &[]),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;
    let path = format!("/?bytes={SIZE}");

    let started = Instant::now();
    let r = gw.get("slow.test", &path).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.body == pattern(SIZE),
        "the limited answer is incomplete or altered: {} of {SIZE} bytes",
        r.body.len()
    );
    assert!(
        took >= Duration::from_millis(1500),
        "128 KiB at 32 KiB/s should take about 4 s; took {took:?}"
    );

    let r = gw.get("fast.test", &path).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.body == pattern(SIZE),
        "the unlimited answer is incomplete or altered: {} of {SIZE} bytes",
        r.body.len()
    );
}

/// A client's count survives a reload that leaves the Ingress's limit annotations alone (an
/// unrelated Ingress edited, then a host added to this one, which also shows the count is
/// shared by the Ingress's rules), and starts afresh when the limit itself changes.
///
/// `limit-rpm: 2` with multiplier 1 (3 at once, then one per 30 s) keeps the client refused
/// for far longer than a reload takes, so "still refused" is not a matter of timing.
#[tokio::test]
async fn limits_survive_reloads_until_they_change() {
    let (_others, objects) = several(&["first", "second"]).await;
    let limited =
        |rpm: &str, hosts: &[&str]| ingress("app", hosts, "app", &[(RPM, rpm), (BURST, "1")]);
    let (app, m) = app_with(&[limited("2", &["app.test"])]).await;
    m.write("others.yaml", &objects);
    m.write(
        "other.yaml",
        &[ingress("other", &["other.test"], "first", &[])],
    );
    let gw = Wasmgress::start(&m, &TRUST_LOOPBACK).await;
    let client = "203.0.113.1";

    let mut conn = gw.h1().await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = conn.send(&from(client, "app.test", "/")).await;
        statuses.push(r.expect("a request on the kept-alive connection").status);
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (3..=4).contains(&passed) && statuses.iter().all(|s| *s == 200 || *s == 503),
        "limit-rpm 2 × burst multiplier 1: expected 3 of 10, got {statuses:?}"
    );
    let arrived = app.arrived();

    // An unrelated Ingress changes: after the reload, the client is still refused.
    m.write(
        "other.yaml",
        &[ingress("other", &["other.test"], "second", &[])],
    );
    gw.poll_until("other.test", "/", "the unrelated Ingress's edit", |r| {
        r.backend().as_deref() == Some("second")
    })
    .await;
    let r = gw.send(&from(client, "app.test", "/")).await;
    assert_eq!(
        r.status,
        503,
        "after an unrelated reload the exhausted client must still be refused: {}",
        r.summary()
    );

    // The limited Ingress itself changes, but not its limits: still refused, on its new host
    // too (one count per Ingress, not per rule).
    m.write("ingress.yaml", &[limited("2", &["app.test", "api.test"])]);
    poll_from("203.0.113.99", &gw, "api.test", "the added host", |r| {
        r.status == 200
    })
    .await;
    for host in ["app.test", "api.test"] {
        let r = gw.send(&from(client, host, "/")).await;
        assert_eq!(
            r.status,
            503,
            "{host}: after a reload that kept the limits, the client must still be refused: {}",
            r.summary()
        );
    }
    // Only the poll's one admitted request arrived since the exhaustion.
    assert_eq!(app.arrived(), arrived + 1);

    // The limit itself changes: new limits, a fresh count, the client passes again.
    m.write(
        "ingress.yaml",
        &[limited("1000", &["app.test", "api.test"])],
    );
    poll_from(client, &gw, "app.test", "the raised limit", |r| {
        r.status == 200
    })
    .await;
}

/// Asks `GET http://host/` from `client` until `ok` holds (within [`RELOAD_LIMIT`]).
async fn poll_from(
    client: &str,
    gw: &Wasmgress,
    host: &str,
    what: &str,
    ok: impl Fn(&Resp) -> bool,
) {
    let deadline = Instant::now() + RELOAD_LIMIT;
    loop {
        let r = gw.send(&from(client, host, "/")).await;
        if ok(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {RELOAD_LIMIT:?} for {what} (GET http://{host}/ from {client}); last: {}",
            r.summary()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A value that is not a whole number rejects the Ingress, which is never served open (its
/// host answers 404 and the backend is not reached); its neighbour serves and stderr names it.
#[tokio::test]
async fn a_bad_limit_rejects_the_ingress() {
    let (app, m) = app_with(&[
        ingress("bad-limit", &["bad.test"], "app", &[(RPS, "ten")]),
        ingress("good", &["good.test"], "app", &[(RPS, "10")]),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    let r = gw.get("good.test", "/").await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    let arrived = app.arrived();
    let r = gw.get("bad.test", "/").await;
    assert_eq!(r.status, 404, "limit-rps: ten: {}", r.summary());
    assert_eq!(
        app.arrived(),
        arrived,
        "the rejected Ingress's backend was reached"
    );
    assert!(
        gw.stderr_mentions("bad-limit").await,
        "no diagnostic on stderr names the rejected Ingress"
    );
}
