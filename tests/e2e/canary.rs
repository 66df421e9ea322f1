//! ingress-nginx canary routing (`canary: "true"` and the `canary-*` annotations) through the
//! real binary, with two real backends: `stable` behind the main Ingress's Service and `canary`
//! behind the canary Ingress's, so which one answered proves where a request went.
//!
//! Covered: each header rule (`always`, `never`, other values falling through; an exact
//! `canary-by-header-value`, which makes `always` an ordinary value; a `canary-by-header-pattern`
//! searched in the value); the precedence header, then cookie, then weight; a canary Ingress
//! older than its main Ingress still attaching; weights over many requests (generous bounds),
//! `canary-weight-total`, a total below 100 read as 100, weight 0 and weight 100; the refusals
//! (no main route, so the canary's host answers 404; a main route of another namespace, whose
//! traffic stays untouched; a second canary for the same route; `canary-*` settings without
//! `canary: "true"`; a canary `defaultBackend`; a bad header pattern), each an `error:` line of
//! `wasmgress validate`; the canary's requests served under the main route's policy (its header
//! edits and its source-range restriction; the canary's own annotations ignored with a warning);
//! and the canary with its request count on `/debug/routes` and
//! `wasmgress_canary_requests_total` on `/metrics`.

use serde_json::Value;
use tokio::net::TcpStream;

use crate::harness::backend::several;
use crate::harness::manifests::NS;
use crate::harness::plugins::Metrics;
use crate::harness::process::{assert_no_error_about, describe, validate, validate_error};
use crate::harness::{Backend, Conn, Ingress, Manifests, Port, Req, Wasmgress, exact, prefix};

const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const BY_HEADER: &str = "nginx.ingress.kubernetes.io/canary-by-header";
const BY_HEADER_VALUE: &str = "nginx.ingress.kubernetes.io/canary-by-header-value";
const BY_HEADER_PATTERN: &str = "nginx.ingress.kubernetes.io/canary-by-header-pattern";
const BY_COOKIE: &str = "nginx.ingress.kubernetes.io/canary-by-cookie";
const WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
const WEIGHT_TOTAL: &str = "nginx.ingress.kubernetes.io/canary-weight-total";
const SNIPPET: &str = "nginx.ingress.kubernetes.io/configuration-snippet";
const ALLOW: &str = "nginx.ingress.kubernetes.io/allowlist-source-range";

/// When main Ingresses were created, unless a test says otherwise.
const MAIN_CREATED: &str = "2024-01-01T00:00:00Z";
/// When canary Ingresses were created, unless a test says otherwise: after their main ones.
const CANARY_CREATED: &str = "2024-06-01T00:00:00Z";

/// A main Ingress `name`: `host` `/` (Prefix) to Service `service`.
fn main_ingress(name: &str, host: &str, service: &str) -> Ingress {
    Ingress::new(name)
        .created(MAIN_CREATED)
        .rule(Some(host), &[prefix("/", service)])
}

/// A canary Ingress `name` (`canary: "true"` plus `settings`): `host` `/` (Prefix) to `service`.
fn canary_ingress(name: &str, host: &str, service: &str, settings: &[(&str, &str)]) -> Ingress {
    settings
        .iter()
        .fold(
            Ingress::new(name)
                .created(CANARY_CREATED)
                .annotation(CANARY, "true"),
            |ing, (k, v)| ing.annotation(k, v),
        )
        .rule(Some(host), &[prefix("/", service)])
}

/// Backends `stable` and `canary` with their Services, plus `ingresses`, in one folder.
async fn stable_and_canary(ingresses: Vec<Value>) -> (Vec<Backend>, Manifests) {
    let (backends, mut objects) = several(&["stable", "canary"]).await;
    objects.extend(ingresses);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    (backends, m)
}

/// `GET http://host/path` with `headers`.
fn request(host: &str, path: &str, headers: &[(&str, &str)]) -> Req {
    headers
        .iter()
        .fold(Req::get(host, path), |r, (k, v)| r.header(k, v))
}

/// One request and the backend expected to answer it (`"404"`: the proxy's `no route`).
struct Case<'a> {
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    want: &'a str,
}

fn case<'a>(host: &'a str, headers: &'a [(&'a str, &'a str)], want: &'a str) -> Case<'a> {
    Case {
        host,
        path: "/",
        headers,
        want,
    }
}

/// Sends every case (each `times` times) and reports every wrong answer at once.
async fn assert_sent(gw: &Wasmgress, times: usize, cases: &[Case<'_>]) {
    let mut wrong = Vec::new();
    for c in cases {
        for _ in 0..times {
            let got = describe(&gw.send(&request(c.host, c.path, c.headers)).await);
            if got != c.want {
                wrong.push(format!(
                    "GET http://{}{} with headers {:?}: expected {}, got {got}",
                    c.host, c.path, c.headers, c.want
                ));
                break;
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests went to the wrong place:\n  {}",
        wrong.len(),
        cases.len(),
        wrong.join("\n  ")
    );
}

/// How many of `n` plain requests to `host` the `canary` backend answered (the others must be
/// answered by `stable`), over one kept-alive connection.
async fn canary_count(gw: &Wasmgress, host: &str, n: usize) -> usize {
    let mut conn = gw.h1().await;
    let mut taken = 0;
    for i in 0..n {
        let req = Req::get(host, "/");
        let r = match conn.send(&req).await {
            Ok(r) => r,
            // The proxy may close a kept-alive connection; carry on over a new one.
            Err(_) => {
                conn = gw.h1().await;
                conn.send(&req)
                    .await
                    .unwrap_or_else(|e| panic!("request {i} to {host}: {e}"))
            }
        };
        match r.backend().as_deref() {
            Some("canary") => taken += 1,
            Some("stable") => {}
            _ => panic!(
                "request {i} to {host} was answered by neither backend: {}",
                r.summary()
            ),
        }
    }
    taken
}

/// The `error:` line of `validate` output about Ingress `ns/name` and exactly `field`, or a
/// panic showing every line about that Ingress.
fn error_on<'a>(stdout: &'a str, ns: &str, name: &str, field: &str) -> &'a str {
    let at = format!("Ingress {ns}/{name}: {field}: ");
    stdout
        .lines()
        .find(|l| l.starts_with("error:") && l.contains(&at))
        .unwrap_or_else(|| {
            panic!(
                "no `error: ... {at}why` line in `wasmgress validate` output; its lines about \
                 {ns}/{name}:\n{}\nall of stdout:\n{stdout}",
                about(stdout, ns, name)
            )
        })
}

/// The `warning:` line of `validate` output about Ingress `ns/name` and exactly `field`.
fn warning_on<'a>(stdout: &'a str, ns: &str, name: &str, field: &str) -> &'a str {
    let at = format!("Ingress {ns}/{name}: {field}: ");
    stdout
        .lines()
        .find(|l| l.starts_with("warning:") && l.contains(&at))
        .unwrap_or_else(|| {
            panic!(
                "no `warning: ... {at}why` line in `wasmgress validate` output; its lines \
                 about {ns}/{name}:\n{}\nall of stdout:\n{stdout}",
                about(stdout, ns, name)
            )
        })
}

fn about(stdout: &str, ns: &str, name: &str) -> String {
    let object = format!("Ingress {ns}/{name}:");
    stdout
        .lines()
        .filter(|l| l.contains(&object))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_says(line: &str, words: &str) {
    assert!(
        line.contains(words),
        "the diagnostic should say {words:?}: {line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Which requests the canary takes

/// `canary-by-header` alone: `always` sends to the canary, `never` and any other value (or no
/// header) keep the request on the main backend (weight 0). The header name in the annotation is
/// case-insensitive. With `canary-by-header-value`, that exact value sends to the canary and
/// `always` is an ordinary value; with `canary-by-header-pattern`, a value containing a match
/// does.
#[tokio::test]
async fn header_rules_always_never_exact_value_and_pattern() {
    let (_backends, m) = stable_and_canary(vec![
        main_ingress("kw", "kw.test", "stable").build(),
        canary_ingress("kw-canary", "kw.test", "canary", &[(BY_HEADER, "X-Canary")]).build(),
        main_ingress("value", "value.test", "stable").build(),
        canary_ingress(
            "value-canary",
            "value.test",
            "canary",
            &[(BY_HEADER, "x-region"), (BY_HEADER_VALUE, "eu-west")],
        )
        .build(),
        main_ingress("pattern", "pattern.test", "stable").build(),
        canary_ingress(
            "pattern-canary",
            "pattern.test",
            "canary",
            &[(BY_HEADER, "x-client"), (BY_HEADER_PATTERN, "beta-[0-9]+")],
        )
        .build(),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    assert_sent(
        &gw,
        3,
        &[
            case("kw.test", &[], "stable"),
            case("kw.test", &[("x-canary", "always")], "canary"),
            case("kw.test", &[("X-CANARY", "always")], "canary"),
            case("kw.test", &[("x-canary", "never")], "stable"),
            case("kw.test", &[("x-canary", "yes")], "stable"),
            case("kw.test", &[("x-canary", "")], "stable"),
            case("kw.test", &[("x-other", "always")], "stable"),
            case("value.test", &[], "stable"),
            case("value.test", &[("x-region", "eu-west")], "canary"),
            case("value.test", &[("x-region", "always")], "stable"),
            case("value.test", &[("x-region", "eu-west-2")], "stable"),
            case("value.test", &[("x-region", "us")], "stable"),
            case("pattern.test", &[], "stable"),
            case("pattern.test", &[("x-client", "beta-42")], "canary"),
            // A search, not a whole-value match.
            case(
                "pattern.test",
                &[("x-client", "client beta-7 v2")],
                "canary",
            ),
            case("pattern.test", &[("x-client", "beta-x")], "stable"),
            case("pattern.test", &[("x-client", "always")], "stable"),
        ],
    )
    .await;

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 0,
        "valid canaries are accepted; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// The header decides first, then the cookie, then the weight: weight 100 but header `never`
/// (or cookie `never`) stays on the main backend; weight 0 but cookie `always` goes to the
/// canary; a header value that is neither keyword falls through to the cookie, and a cookie
/// value that is neither falls through to the weight.
#[tokio::test]
async fn the_header_decides_before_the_cookie_and_the_cookie_before_the_weight() {
    let rule = |weight| {
        [
            (BY_HEADER, "x-canary"),
            (BY_COOKIE, "canary_cookie"),
            (WEIGHT, weight),
        ]
    };
    let (_backends, m) = stable_and_canary(vec![
        main_ingress("all", "all.test", "stable").build(),
        canary_ingress("all-canary", "all.test", "canary", &rule("100")).build(),
        main_ingress("none", "none.test", "stable").build(),
        canary_ingress("none-canary", "none.test", "canary", &rule("0")).build(),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    assert_sent(
        &gw,
        5,
        &[
            // Weight 100.
            case("all.test", &[], "canary"),
            case("all.test", &[("x-canary", "never")], "stable"),
            case(
                "all.test",
                &[("x-canary", "never"), ("cookie", "canary_cookie=always")],
                "stable",
            ),
            case("all.test", &[("cookie", "canary_cookie=never")], "stable"),
            case(
                "all.test",
                &[("cookie", "session=1; canary_cookie=never; theme=dark")],
                "stable",
            ),
            case(
                "all.test",
                &[("x-canary", "maybe"), ("cookie", "canary_cookie=never")],
                "stable",
            ),
            case("all.test", &[("cookie", "canary_cookie=maybe")], "canary"),
            case("all.test", &[("cookie", "other_cookie=never")], "canary"),
            // Weight 0.
            case("none.test", &[], "stable"),
            case("none.test", &[("cookie", "canary_cookie=always")], "canary"),
            case(
                "none.test",
                &[("cookie", "session=1; canary_cookie=always")],
                "canary",
            ),
            case(
                "none.test",
                &[("x-canary", "always"), ("cookie", "canary_cookie=never")],
                "canary",
            ),
            case(
                "none.test",
                &[("x-canary", "maybe"), ("cookie", "canary_cookie=always")],
                "canary",
            ),
            case("none.test", &[("x-canary", "maybe")], "stable"),
            case("none.test", &[("cookie", "canary_cookie=maybe")], "stable"),
        ],
    )
    .await;
}

/// A canary Ingress created before its main Ingress (and listed first) still attaches to it:
/// the ages of the two play no part.
#[tokio::test]
async fn a_canary_older_than_its_main_ingress_still_attaches() {
    let (_backends, m) = stable_and_canary(vec![
        canary_ingress(
            "early-canary",
            "early.test",
            "canary",
            &[(BY_HEADER, "x-canary")],
        )
        .created("2020-01-01T00:00:00Z")
        .build(),
        main_ingress("late", "early.test", "stable")
            .created("2025-01-01T00:00:00Z")
            .build(),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    assert_sent(
        &gw,
        3,
        &[
            case("early.test", &[], "stable"),
            case("early.test", &[("x-canary", "always")], "canary"),
            case("early.test", &[("x-canary", "never")], "stable"),
        ],
    )
    .await;

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_no_error_about(&stdout, NS, "early-canary");
    assert_no_error_about(&stdout, NS, "late");
}

/// `canary-weight` out of `canary-weight-total` (default 100) over many requests, with generous
/// bounds (each at least four standard deviations wide): 30 of 100, 500 of 1000, and 50 with a
/// total of 50, which reads as 50 of 100 (with a warning), not as every request. Weight 0 never
/// takes a request, weight 100 takes them all.
#[tokio::test]
async fn weights_split_requests_in_proportion() {
    let (_backends, m) = stable_and_canary(vec![
        main_ingress("w30", "w30.test", "stable").build(),
        canary_ingress("w30-canary", "w30.test", "canary", &[(WEIGHT, "30")]).build(),
        main_ingress("w500", "w500.test", "stable").build(),
        canary_ingress(
            "w500-canary",
            "w500.test",
            "canary",
            &[(WEIGHT, "500"), (WEIGHT_TOTAL, "1000")],
        )
        .build(),
        main_ingress("low-total", "low-total.test", "stable").build(),
        canary_ingress(
            "low-total-canary",
            "low-total.test",
            "canary",
            &[(WEIGHT, "50"), (WEIGHT_TOTAL, "50")],
        )
        .build(),
        main_ingress("w0", "w0.test", "stable").build(),
        canary_ingress("w0-canary", "w0.test", "canary", &[(WEIGHT, "0")]).build(),
        main_ingress("w100", "w100.test", "stable").build(),
        canary_ingress("w100-canary", "w100.test", "canary", &[(WEIGHT, "100")]).build(),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    let mut wrong = Vec::new();
    for (host, n, low, high) in [
        ("w30.test", 400, 0.18, 0.42),
        ("w500.test", 400, 0.38, 0.62),
        ("low-total.test", 400, 0.35, 0.65),
        ("w0.test", 100, 0.0, 0.0),
        ("w100.test", 100, 1.0, 1.0),
    ] {
        let taken = canary_count(&gw, host, n).await;
        let share = taken as f64 / n as f64;
        if !(low..=high).contains(&share) {
            wrong.push(format!(
                "{host}: the canary took {taken} of {n} requests ({share:.3}), expected a share \
                 within [{low}, {high}]"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = warning_on(
        &stdout,
        NS,
        "low-total-canary",
        &format!("metadata.annotations[{WEIGHT_TOTAL}]"),
    );
    assert_says(line, "100");
}

// ---------------------------------------------------------------------------------------------
// What is refused

/// A canary whose host and path (and path type) no main Ingress serves is an error on that
/// path, and serves nothing: its host answers 404 and a same-path Exact canary next to a Prefix
/// main route does not take that route's requests.
#[tokio::test]
async fn a_canary_without_a_main_route_is_refused_and_serves_nothing() {
    let (_backends, m) = stable_and_canary(vec![
        canary_ingress(
            "lone-canary",
            "lone.test",
            "canary",
            &[(BY_HEADER, "x-canary"), (WEIGHT, "100")],
        )
        .build(),
        Ingress::new("typed")
            .created(MAIN_CREATED)
            .rule(Some("typed.test"), &[prefix("/app", "stable")])
            .build(),
        Ingress::new("typed-canary")
            .created(CANARY_CREATED)
            .annotation(CANARY, "true")
            .annotation(BY_HEADER, "x-canary")
            .annotation(WEIGHT, "100")
            .rule(Some("typed.test"), &[exact("/app", "canary")])
            .build(),
    ])
    .await;

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 1,
        "a lone canary is rejected; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for name in ["lone-canary", "typed-canary"] {
        let line = error_on(&stdout, NS, name, "spec.rules[0].http.paths[0]");
        assert_says(line, "never serves on its own");
    }
    assert_no_error_about(&stdout, NS, "typed");

    let gw = Wasmgress::start(&m, &[]).await;
    assert_sent(
        &gw,
        3,
        &[
            case("lone.test", &[], "404"),
            case("lone.test", &[("x-canary", "always")], "404"),
            Case {
                host: "typed.test",
                path: "/app",
                headers: &[],
                want: "stable",
            },
            Case {
                host: "typed.test",
                path: "/app",
                headers: &[("x-canary", "always")],
                want: "stable",
            },
        ],
    )
    .await;
}

/// A canary Ingress with one path that has a main route and one that has none is rejected
/// (validate exits 1 naming the lone path) and, like any rejected Ingress, serves nothing: the
/// path that has a main route does not take that route's requests either.
#[tokio::test]
async fn a_canary_with_a_lone_path_is_rejected_whole() {
    let (_backends, m) = stable_and_canary(vec![
        main_ingress("half", "half.test", "stable").build(),
        Ingress::new("half-canary")
            .created(CANARY_CREATED)
            .annotation(CANARY, "true")
            .annotation(BY_HEADER, "x-canary")
            .rule(Some("half.test"), &[prefix("/", "canary")])
            .rule(Some("nowhere.test"), &[prefix("/", "canary")])
            .build(),
    ])
    .await;

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = error_on(&stdout, NS, "half-canary", "spec.rules[1].http.paths[0]");
    assert_says(line, "never serves on its own");

    let gw = Wasmgress::start(&m, &[]).await;
    assert_sent(
        &gw,
        3,
        &[
            case("nowhere.test", &[("x-canary", "always")], "404"),
            case("half.test", &[], "stable"),
            case("half.test", &[("x-canary", "always")], "stable"),
        ],
    )
    .await;
}

/// A canary attaches only to a main Ingress of its own namespace: a canary in `team-b` for
/// `team-a`'s host and path is an error, and `team-a`'s traffic stays on `team-a`'s backend even
/// with the header `always` and weight 100.
#[tokio::test]
async fn a_canary_never_takes_traffic_from_another_namespace() {
    let stable = Backend::start("stable").await;
    let intruder = Backend::start("canary").await;
    let mut objects = stable.objects_in("team-a", "stable");
    objects.extend(intruder.objects_in("team-b", "canary"));
    objects.push(
        main_ingress("shop", "shared.test", "stable")
            .namespace("team-a")
            .build(),
    );
    objects.push(
        canary_ingress(
            "intruder",
            "shared.test",
            "canary",
            &[(BY_HEADER, "x-canary"), (WEIGHT, "100")],
        )
        .namespace("team-b")
        .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 1,
        "a canary for another namespace's route is rejected; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = error_on(&stdout, "team-b", "intruder", "spec.rules[0].http.paths[0]");
    assert_says(line, "attaches only to a main Ingress of its own namespace");
    assert_no_error_about(&stdout, "team-a", "shop");

    let gw = Wasmgress::start(&m, &[]).await;
    assert_sent(
        &gw,
        5,
        &[
            case("shared.test", &[], "stable"),
            case("shared.test", &[("x-canary", "always")], "stable"),
        ],
    )
    .await;
}

/// A main route takes at most one canary: the younger of two is an error and takes nothing
/// (neither by its header nor by its weight of 100), while the older one works.
#[tokio::test]
async fn a_second_canary_for_the_same_route_is_refused() {
    let (_backends, mut objects) = several(&["stable", "canary-a", "canary-b"]).await;
    objects.push(main_ingress("shop", "two.test", "stable").build());
    objects.push(
        canary_ingress(
            "first-canary",
            "two.test",
            "canary-a",
            &[(BY_HEADER, "x-a")],
        )
        .created("2024-02-01T00:00:00Z")
        .build(),
    );
    objects.push(
        canary_ingress(
            "second-canary",
            "two.test",
            "canary-b",
            &[(BY_HEADER, "x-b"), (WEIGHT, "100")],
        )
        .created("2024-03-01T00:00:00Z")
        .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 1,
        "a second canary is rejected; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = error_on(&stdout, NS, "second-canary", "spec.rules[0].http.paths[0]");
    assert_says(line, "at most one canary");
    assert_no_error_about(&stdout, NS, "first-canary");
    assert_no_error_about(&stdout, NS, "shop");

    let gw = Wasmgress::start(&m, &[]).await;
    assert_sent(
        &gw,
        5,
        &[
            case("two.test", &[], "stable"),
            case("two.test", &[("x-b", "always")], "stable"),
            case("two.test", &[("x-a", "always")], "canary-a"),
        ],
    )
    .await;
}

/// Configuration mistakes are errors naming what is wrong: `canary-*` settings without
/// `canary: "true"` ("configured but not enabled": that Ingress is rejected, so its host answers
/// 404), a canary with a `defaultBackend`, and a `canary-by-header-pattern` that is not a
/// regular expression. A canary's own non-canary annotations are a warning.
#[tokio::test]
async fn canary_configuration_mistakes_are_reported() {
    let (_backends, m) = stable_and_canary(vec![
        Ingress::new("not-enabled")
            .created(MAIN_CREATED)
            .annotation(WEIGHT, "20")
            .annotation(BY_HEADER, "x-canary")
            .rule(Some("off.test"), &[prefix("/", "stable")])
            .build(),
        Ingress::new("disabled")
            .created(MAIN_CREATED)
            .annotation(CANARY, "false")
            .annotation(BY_COOKIE, "flag")
            .rule(Some("disabled.test"), &[prefix("/", "stable")])
            .build(),
        main_ingress("shop", "shop.test", "stable").build(),
        canary_ingress("with-default", "shop.test", "canary", &[(WEIGHT, "10")])
            .default_backend("canary", Port::Number(80))
            .build(),
        main_ingress("pat", "pat.test", "stable").build(),
        canary_ingress(
            "bad-pattern",
            "pat.test",
            "canary",
            &[(BY_HEADER, "x-canary"), (BY_HEADER_PATTERN, "beta-(")],
        )
        .build(),
        main_ingress("noted", "noted.test", "stable").build(),
        canary_ingress(
            "noted-canary",
            "noted.test",
            "canary",
            &[
                (BY_HEADER, "x-canary"),
                (SNIPPET, "more_set_headers 'X-From-Canary: yes';"),
            ],
        )
        .build(),
    ])
    .await;

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for (name, key) in [
        ("not-enabled", WEIGHT),
        ("not-enabled", BY_HEADER),
        ("disabled", BY_COOKIE),
    ] {
        assert_says(
            validate_error(&stdout, NS, name, key),
            "configured but not enabled",
        );
    }
    error_on(&stdout, NS, "with-default", "spec.defaultBackend");
    let pattern = stdout
        .lines()
        .find(|l| {
            l.starts_with("error:")
                && l.contains("Ingress default/bad-pattern:")
                && l.contains("canary-by-header-pattern")
        })
        .unwrap_or_else(|| {
            panic!(
                "no error line about bad-pattern's canary-by-header-pattern; its lines:\n{}",
                about(&stdout, NS, "bad-pattern")
            )
        });
    assert_says(pattern, "beta-(");
    let noted = warning_on(&stdout, NS, "noted-canary", "metadata.annotations");
    assert_says(noted, "configuration-snippet");
    for name in ["shop", "pat", "noted", "noted-canary"] {
        assert_no_error_about(&stdout, NS, name);
    }

    let gw = Wasmgress::start(&m, &[]).await;
    assert_sent(
        &gw,
        2,
        &[
            case("off.test", &[], "404"),
            case("disabled.test", &[], "404"),
            case("shop.test", &[], "stable"),
            case("pat.test", &[("x-canary", "always")], "stable"),
            case("pat.test", &[("x-canary", "beta-(")], "stable"),
            case("noted.test", &[("x-canary", "always")], "canary"),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Under the main route's policy

/// The requests the canary takes are served under the main route's policy: the main Ingress's
/// `configuration-snippet` header edits reach the canary backend and the client, the canary's
/// own snippet and source range are ignored, and the main Ingress's `allowlist-source-range`
/// refuses a canary request as it refuses any other.
#[tokio::test]
async fn canary_requests_are_served_under_the_main_routes_policy() {
    let (_backends, m) = stable_and_canary(vec![
        main_ingress("edited", "edited.test", "stable")
            .annotation(
                SNIPPET,
                "proxy_set_header X-Main-Policy yes;\nmore_set_headers 'X-Main-Response: yes';\n",
            )
            .build(),
        canary_ingress(
            "edited-canary",
            "edited.test",
            "canary",
            &[
                (BY_HEADER, "x-canary"),
                (
                    SNIPPET,
                    "proxy_set_header X-Canary-Own yes;\nmore_set_headers 'X-Canary-Response: yes';\n",
                ),
                // Would refuse every test client if it applied.
                (ALLOW, "10.0.0.0/8"),
            ],
        )
        .build(),
        main_ingress("locked", "locked.test", "stable")
            .annotation(ALLOW, "10.0.0.0/8")
            .build(),
        canary_ingress(
            "locked-canary",
            "locked.test",
            "canary",
            &[(BY_HEADER, "x-canary"), (WEIGHT, "100")],
        )
        .build(),
        main_ingress("open", "open.test", "stable")
            .annotation(ALLOW, "127.0.0.0/8")
            .build(),
        canary_ingress(
            "open-canary",
            "open.test",
            "canary",
            &[(BY_HEADER, "x-canary"), (WEIGHT, "100")],
        )
        .build(),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    for (headers, backend) in [
        (&[("x-canary", "always")][..], "canary"),
        (&[][..], "stable"),
    ] {
        let r = gw.send(&request("edited.test", "/", headers)).await;
        assert_eq!(r.backend().as_deref(), Some(backend), "{}", r.summary());
        assert_eq!(
            r.seen("x-main-policy"),
            ["yes"],
            "{backend}: the main route's request header edit"
        );
        assert_eq!(
            r.header("x-main-response"),
            Some("yes"),
            "{backend}: the main route's response header edit"
        );
        assert!(
            r.seen("x-canary-own").is_empty(),
            "{backend}: the canary's own snippet must not apply"
        );
        assert_eq!(
            r.header("x-canary-response"),
            None,
            "{backend}: the canary's own snippet must not apply"
        );
    }

    for headers in [&[("x-canary", "always")][..], &[][..]] {
        let r = gw.send(&request("locked.test", "/", headers)).await;
        assert_eq!(
            r.status,
            403,
            "the main route's allowlist refuses a canary request too ({headers:?}): {}",
            r.summary()
        );
        assert_eq!(r.backend(), None, "no backend may be reached");
    }
    assert_sent(
        &gw,
        3,
        &[
            case("open.test", &[], "canary"),
            case("open.test", &[("x-canary", "never")], "stable"),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// What an operator sees

/// A sample `name{...}` whose labels include every `labels` pair, if exposed.
fn sample(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels_text, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| labels_text.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// `/debug/routes` shows each main route's canary (its Ingress, backend, endpoints, rule and the
/// number of requests it took) and `/metrics` counts them in `wasmgress_canary_requests_total`
/// under the main route's labels.
#[tokio::test]
async fn debug_routes_and_metrics_show_the_canary_and_its_requests() {
    let (backends, m) = stable_and_canary(vec![
        Ingress::new("shop")
            .created(MAIN_CREATED)
            .rule(
                Some("obs.test"),
                &[
                    prefix("/", "stable"),
                    prefix("/v", "stable"),
                    prefix("/p", "stable"),
                ],
            )
            .build(),
        canary_ingress(
            "shop-canary",
            "obs.test",
            "canary",
            &[(BY_HEADER, "x-canary"), (BY_COOKIE, "ck"), (WEIGHT, "0")],
        )
        .build(),
        Ingress::new("shop-canary-value")
            .created(CANARY_CREATED)
            .annotation(CANARY, "true")
            .annotation(BY_HEADER, "x-region")
            .annotation(BY_HEADER_VALUE, "eu")
            .annotation(WEIGHT, "5")
            .annotation(WEIGHT_TOTAL, "1000")
            .rule(Some("obs.test"), &[prefix("/v", "canary")])
            .build(),
        Ingress::new("shop-canary-pattern")
            .created(CANARY_CREATED)
            .annotation(CANARY, "true")
            .annotation(BY_HEADER, "x-client")
            .annotation(BY_HEADER_PATTERN, "^beta")
            .rule(Some("obs.test"), &[prefix("/p", "canary")])
            .build(),
    ])
    .await;
    let canary_addr = backends[1].addr.to_string();
    let gw = Wasmgress::start(&m, &[]).await;

    // Three requests to the canary of `/`, two to the main backend.
    assert_sent(
        &gw,
        1,
        &[
            case("obs.test", &[("x-canary", "always")], "canary"),
            case("obs.test", &[("cookie", "ck=always")], "canary"),
            case("obs.test", &[("x-canary", "always")], "canary"),
            case("obs.test", &[], "stable"),
            case("obs.test", &[("x-canary", "never")], "stable"),
        ],
    )
    .await;

    let tcp = TcpStream::connect(gw.admin).await.expect("admin");
    let mut admin = Conn::h1(tcp).await.expect("admin handshake");
    let routes = admin
        .send(&Req::get("localhost", "/debug/routes"))
        .await
        .expect("/debug/routes");
    assert_eq!(routes.status, 200, "{}", routes.summary());
    let doc: Value = serde_json::from_str(&routes.text()).expect("/debug/routes is JSON");
    let paths = doc["routes"]["hosts"]["obs.test"]
        .as_array()
        .unwrap_or_else(|| panic!("obs.test is listed: {doc:#}"));
    let route = |path: &str| {
        paths
            .iter()
            .find(|p| p["path"] == path && p["pathType"] == "Prefix")
            .unwrap_or_else(|| panic!("Prefix {path} of obs.test is listed: {paths:#?}"))
            .clone()
    };

    let root = route("/");
    assert_eq!(root["ingress"], "default/shop", "{root:#}");
    let canary = &root["canary"];
    assert_eq!(canary["ingress"], "default/shop-canary", "{root:#}");
    assert!(
        canary["backend"]
            .as_str()
            .is_some_and(|b| b.contains("canary")),
        "the canary's backend names its Service: {root:#}"
    );
    assert_eq!(
        canary["endpoints"],
        serde_json::json!([canary_addr]),
        "{root:#}"
    );
    assert_eq!(
        canary["rule"],
        serde_json::json!({
            "byHeader": "x-canary",
            "byHeaderValue": null,
            "byHeaderPattern": null,
            "byCookie": "ck",
            "weight": 0,
            "weightTotal": 100,
        }),
        "{root:#}"
    );
    assert_eq!(canary["requests"], 3, "{root:#}");

    let v = route("/v");
    assert_eq!(v["canary"]["ingress"], "default/shop-canary-value", "{v:#}");
    assert_eq!(v["canary"]["rule"]["byHeader"], "x-region", "{v:#}");
    assert_eq!(v["canary"]["rule"]["byHeaderValue"], "eu", "{v:#}");
    assert_eq!(v["canary"]["rule"]["weight"], 5, "{v:#}");
    assert_eq!(v["canary"]["rule"]["weightTotal"], 1000, "{v:#}");
    assert_eq!(v["canary"]["requests"], 0, "{v:#}");
    let p = route("/p");
    assert_eq!(
        p["canary"]["ingress"], "default/shop-canary-pattern",
        "{p:#}"
    );
    assert_eq!(p["canary"]["rule"]["byHeaderPattern"], "^beta", "{p:#}");
    assert_eq!(p["canary"]["rule"]["byHeaderValue"], Value::Null, "{p:#}");

    let metrics = Metrics::scrape(&gw).await;
    let canary_lines: Vec<&str> = metrics
        .text
        .lines()
        .filter(|l| l.starts_with("wasmgress_canary_requests_total{"))
        .collect();
    let taken = sample(
        &metrics,
        "wasmgress_canary_requests_total",
        &[
            ("ingress", "default/shop"),
            ("host", "obs.test"),
            ("path", "/"),
        ],
    );
    assert_eq!(
        taken,
        Some(3.0),
        "the canary's requests, under the main route's labels; canary samples:\n{}",
        canary_lines.join("\n")
    );
    let root_line = canary_lines
        .iter()
        .find(|l| l.contains("path=\"/\""))
        .expect("the sample of `/`");
    assert!(
        root_line.contains("service=\"") && root_line.contains("stable"),
        "the service label is the main route's: {root_line}"
    );
}
