//! CORS (`nginx.ingress.kubernetes.io/enable-cors` and its `cors-*` companions) as a real
//! browser sees it: headless Chromium loads a page from `app.test` through wasmgress, and the
//! page's script makes cross-origin `fetch`es to other hosts on the same wasmgress. Only the
//! browser decides whether CORS headers suffice, so the page reports what its script could
//! read, the recording backends report what reached them, and the access log shows the
//! preflights wasmgress answered itself:
//!
//! - an allowed origin gets a non-simple `PUT` through (with and without credentials); the
//!   preflight is answered by wasmgress and never reaches the backend;
//! - an origin the list does not name is blocked: its preflight reaches the backend (no CORS
//!   there), gets no grant, and the `PUT` is never sent;
//! - an allowed origin sending a header `cors-allow-headers` does not name is blocked too,
//!   though wasmgress answered its preflight: the browser reads the header list;
//! - `*` (the default origin list) lets a simple `GET` through, while the same `GET` to a host
//!   without CORS is sent but its answer hidden from the page (the control: this browser
//!   really enforces CORS here).

use std::time::Duration;

use serde_json::Value;

use crate::harness::browser::{Page, chromium_dom, element_text};
use crate::harness::process::RELOAD_LIMIT;
use crate::harness::recorder::Recorder;
use crate::harness::{Ingress, Manifests, Wasmgress, prefix};

const ANNOTATION: &str = "nginx.ingress.kubernetes.io/";

/// The page Chromium loads from `http://app.test:PORT/`. Each probe is one cross-origin fetch
/// to a host on the same listener; all probes run in order and their outcomes land in
/// `<pre id="out">` as one JSON object, which the dumped DOM carries back to the test.
const PAGE: &str = r#"<!doctype html>
<html><head><title>cors probes</title></head>
<body><pre id="out">pending</pre>
<script>
// "ok:<body>" when the browser let the page read the answer, "blocked:<error>" when not.
async function probe(url, init) {
  try {
    const r = await fetch(url, init);
    return "ok:" + (await r.text());
  } catch (e) {
    return "blocked:" + e;
  }
}
const at = (host, path) => "http://" + host + ":" + location.port + path;
// A PUT with a custom header is not a simple request: the browser preflights it.
const put = { method: "PUT", headers: { "X-Custom": "1" }, body: "payload" };
(async () => {
  const r = {};
  r.allowed = await probe(at("api.test", "/data"), put);
  r.credentials = await probe(at("api.test", "/data?credentials"), { ...put, credentials: "include" });
  r.other_origin = await probe(at("partner.test", "/data"), put);
  r.header_not_allowed = await probe(at("strict.test", "/data"), put);
  r.any_origin = await probe(at("open.test", "/data"));
  r.no_cors = await probe(at("plain.test", "/data"));
  document.getElementById("out").textContent = JSON.stringify(r);
})();
</script>
</body></html>
"#;

/// An Ingress `name` for `host` (path `/` to Service `name`) with `annotations` (short keys).
fn ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ing = Ingress::new(name);
    for (key, value) in annotations {
        ing = ing.annotation(&format!("{ANNOTATION}{key}"), value);
    }
    ing.rule(Some(host), &[prefix("/", name)]).build()
}

/// Every request `rec` received at `/data` (the readiness polls ask for `/ready`).
fn data_requests(rec: &Recorder) -> Vec<Value> {
    rec.finished()
        .into_iter()
        .filter(|r| r["path"] == "/data")
        .collect()
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"][name][0].as_str()
}

/// The page's outcome for probe `key`: the backend's echo JSON when the page could read it,
/// or the browser's error when it was blocked.
fn outcome(results: &Value, key: &str) -> Result<Value, String> {
    let text = results[key]
        .as_str()
        .unwrap_or_else(|| panic!("the page reported no outcome for `{key}`: {results}"));
    if let Some(body) = text.strip_prefix("ok:") {
        Ok(serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("`{key}`: the page read {body:?}, not echo JSON: {e}")))
    } else if let Some(error) = text.strip_prefix("blocked:") {
        Err(error.to_owned())
    } else {
        panic!("`{key}`: unexpected outcome {text:?}")
    }
}

/// The access log's lines for `method` requests to `host` (any port), as (path and query,
/// status).
fn logged(gw: &Wasmgress, host: &str, method: &str) -> Vec<(String, u64)> {
    gw.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["method"] == method
                && l["host"]
                    .as_str()
                    .is_some_and(|h| h.split(':').next() == Some(host))
        })
        .map(|l| {
            (
                l["path"].as_str().unwrap_or_default().to_owned(),
                l["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_real_browser_obeys_the_cors_annotations() {
    let page = Page::start("app", PAGE).await;
    let api = Recorder::start("api").await;
    let partner = Recorder::start("partner").await;
    let strict = Recorder::start("strict").await;
    let open = Recorder::start("open").await;
    let plain = Recorder::start("plain").await;

    let mut objects = page.objects();
    for rec in [&api, &partner, &strict, &open, &plain] {
        objects.extend(rec.objects());
    }
    objects.push(ingress("app", "app.test", &[]));
    objects.push(ingress("open", "open.test", &[("enable-cors", "true")]));
    objects.push(ingress("plain", "plain.test", &[]));
    let m = Manifests::new();
    m.write("base.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--access-log", "json"]).await;

    // The page's origin holds the listener's port, known only now: the Ingresses that name it
    // are added to the running controller.
    let origin = format!("http://app.test:{}", gw.http.port());
    m.write(
        "cors.yaml",
        &[
            ingress(
                "api",
                "api.test",
                &[
                    ("enable-cors", "true"),
                    (
                        "cors-allow-origin",
                        &format!("https://other.test, {origin}"),
                    ),
                    ("cors-allow-headers", "Content-Type, X-Custom"),
                ],
            ),
            ingress(
                "partner",
                "partner.test",
                &[
                    ("enable-cors", "true"),
                    ("cors-allow-origin", "https://other.test"),
                    ("cors-allow-headers", "Content-Type, X-Custom"),
                ],
            ),
            // The default `cors-allow-headers` does not name X-Custom.
            ingress(
                "strict",
                "strict.test",
                &[("enable-cors", "true"), ("cors-allow-origin", &origin)],
            ),
        ],
    );
    for (host, backend) in [
        ("api.test", "api"),
        ("partner.test", "partner"),
        ("strict.test", "strict"),
    ] {
        gw.poll_until(host, "/ready", &format!("{host} to be served"), |r| {
            r.backend().as_deref() == Some(backend)
        })
        .await;
    }

    let dom = chromium_dom(&format!("{origin}/")).await;
    let out = element_text(&dom, "out")
        .unwrap_or_else(|| panic!("no <pre id=\"out\"> in the page Chromium dumped:\n{dom}"));
    assert_ne!(
        out, "pending",
        "Chromium dumped the page before its script finished:\n{dom}"
    );
    let results: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("the page wrote {out:?}, not JSON: {e}"));

    // Allowed origin: both PUTs were read by the page, and reached the backend as sent.
    for key in ["allowed", "credentials"] {
        let echo = outcome(&results, key)
            .unwrap_or_else(|e| panic!("`{key}`: the browser blocked an allowed origin: {e}"));
        assert_eq!(echo["backend"], "api", "`{key}`: {echo}");
        assert_eq!(echo["method"], "PUT", "`{key}`: {echo}");
    }
    let seen = data_requests(&api);
    let methods: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), r["query"].as_str().unwrap()))
        .collect();
    assert_eq!(
        methods,
        [("PUT", ""), ("PUT", "credentials")],
        "api.test's backend should see the two PUTs and no preflight: {seen:#?}"
    );
    for r in &seen {
        assert_eq!(header(r, "origin"), Some(origin.as_str()), "{r}");
        assert_eq!(header(r, "x-custom"), Some("1"), "{r}");
    }

    // Another origin: the preflight went to the backend (this origin earns no CORS answer from
    // wasmgress), the backend's answer granted nothing, so the browser never sent the PUT.
    let blocked = outcome(&results, "other_origin");
    assert!(
        blocked.is_err(),
        "an origin outside the list was let through: {blocked:?}"
    );
    let seen = data_requests(&partner);
    assert_eq!(seen.len(), 1, "only the preflight: {seen:#?}");
    assert_eq!(seen[0]["method"], "OPTIONS", "{seen:#?}");
    assert_eq!(header(&seen[0], "origin"), Some(origin.as_str()));
    assert_eq!(
        header(&seen[0], "access-control-request-method"),
        Some("PUT")
    );

    // Allowed origin, header not allowed: wasmgress answered the preflight, the browser read
    // its header list and stopped; nothing reached the backend.
    let blocked = outcome(&results, "header_not_allowed");
    assert!(
        blocked.is_err(),
        "a header outside cors-allow-headers was let through: {blocked:?}"
    );
    assert_eq!(data_requests(&strict), Vec::<Value>::new());

    // `*`: a simple GET needs no preflight and is readable; without CORS the same GET is sent
    // (simple requests are) but the page may not read the answer.
    let echo = outcome(&results, "any_origin")
        .unwrap_or_else(|e| panic!("`*` did not let a simple GET through: {e}"));
    assert_eq!(echo["backend"], "open", "{echo}");
    let blocked = outcome(&results, "no_cors");
    assert!(
        blocked.is_err(),
        "a host without CORS was readable cross-origin: {blocked:?}"
    );
    for (rec, what) in [(&open, "open.test"), (&plain, "plain.test")] {
        let seen = data_requests(rec);
        assert_eq!(seen.len(), 1, "{what}: one GET: {seen:#?}");
        assert_eq!(seen[0]["method"], "GET", "{what}: {seen:#?}");
    }

    // The preflights the backends did not see were answered by wasmgress with a 204. Log lines
    // are written when a response ends, by a writer thread: wait for them.
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    let (api_preflights, strict_preflights) = loop {
        let found = (
            logged(&gw, "api.test", "OPTIONS"),
            logged(&gw, "strict.test", "OPTIONS"),
        );
        let complete = found.0.len() >= 2 && !found.1.is_empty();
        if complete || tokio::time::Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        api_preflights,
        [
            ("/data".to_owned(), 204),
            ("/data?credentials".to_owned(), 204)
        ],
        "one preflight per PUT to api.test, answered 204 by wasmgress"
    );
    assert_eq!(
        strict_preflights,
        [("/data".to_owned(), 204)],
        "strict.test's preflight, answered 204 by wasmgress"
    );
}
