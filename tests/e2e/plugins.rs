//! Plugins (issue #3) through the real binary: the built-in annotation plugins change what a
//! real backend sees (`backend-protocol`, timeouts, header edits, snippets, redirects);
//! dangerous snippets are refused, never executed; the example `api-key` plugin loaded with
//! `--plugin-dir` guards its route; plugins that loop, trap or grow without bound fail only
//! their own requests; SHA-256 pins, unknown-annotation warnings, zero Wasm calls on static
//! routes (from the `/metrics` counters) and reloading of replaced plugin files.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{Method, Version};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::harness::backend::{several, unresponsive_port};
use crate::harness::certs::TestCa;
use crate::harness::manifests::{
    NS, ServicePort, endpoint_slice, implementation_specific, ready, service,
};
use crate::harness::plugins::{Metrics, PluginDir, sha256_hex, wasm, with_custom_section};
use crate::harness::process::{assert_no_error_about, describe, validate};
use crate::harness::{Ingress, Manifests, Port, Req, Resp, Wasmgress, prefix};

const BACKEND_PROTOCOL: &str = "nginx.ingress.kubernetes.io/backend-protocol";
const READ_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-read-timeout";
const CONNECT_TIMEOUT: &str = "nginx.ingress.kubernetes.io/proxy-connect-timeout";
const REQUEST_HEADERS: &str = "wasmgress.io/request-headers";
const RESPONSE_HEADERS: &str = "wasmgress.io/response-headers";
const UPSTREAM_VHOST: &str = "nginx.ingress.kubernetes.io/upstream-vhost";
const X_FORWARDED_PREFIX: &str = "nginx.ingress.kubernetes.io/x-forwarded-prefix";
const CONFIGURATION_SNIPPET: &str = "nginx.ingress.kubernetes.io/configuration-snippet";
const SERVER_SNIPPET: &str = "nginx.ingress.kubernetes.io/server-snippet";
const PERMANENT_REDIRECT: &str = "nginx.ingress.kubernetes.io/permanent-redirect";
const PERMANENT_REDIRECT_CODE: &str = "nginx.ingress.kubernetes.io/permanent-redirect-code";
const APP_ROOT: &str = "nginx.ingress.kubernetes.io/app-root";
const REWRITE_TARGET: &str = "nginx.ingress.kubernetes.io/rewrite-target";
const USE_REGEX: &str = "nginx.ingress.kubernetes.io/use-regex";
const SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
const FORCE_SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/force-ssl-redirect";
const PLUGINS: &str = "wasmgress.io/plugins";
const API_KEY_KEYS: &str = "wasmgress.io/plugin.api-key.keys";
const API_KEY_SHA256: &str = "wasmgress.io/plugin.api-key.sha256";

/// How long a request failed by a misbehaving plugin may take (its deadline is 5 ms).
const PLUGIN_FAILURE_LIMIT: Duration = Duration::from_secs(3);

/// An Ingress `name` for `host`, everything to Service `service`, with `annotations`.
fn ingress(name: &str, host: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(host), &[prefix("/", service)])
        .build()
}

/// The `SEVERITY: ... Ingress default/NAME: metadata.annotations[KEY]...` line of `validate`
/// output, or a panic showing every line about that Ingress.
fn diagnostic<'a>(stdout: &'a str, severity: &str, name: &str, key: &str) -> &'a str {
    let object = format!("Ingress {NS}/{name}:");
    let field = if key.is_empty() {
        "metadata.annotations".to_owned()
    } else {
        format!("metadata.annotations[{key}]")
    };
    stdout
        .lines()
        .find(|l| {
            l.starts_with(&format!("{severity}: "))
                && l.split_once(&object)
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(&field))
        })
        .unwrap_or_else(|| {
            panic!(
                "no `{severity}: ... {object} {field}: why` line in `wasmgress validate` output; \
                 its lines about {name}:\n{}\nall of stdout:\n{stdout}",
                stdout
                    .lines()
                    .filter(|l| l.contains(&object))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

/// Asserts `r` is a redirect with `status` to `location` that never reached a backend.
fn assert_redirect(r: &Resp, status: u16, location: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.summary());
    assert_eq!(
        r.header("location"),
        Some(location),
        "{what}: {}",
        r.summary()
    );
    assert_eq!(r.backend(), None, "{what}: the backend must not be reached");
}

/// A gRPC unary `helloworld.Greeter/SayHello` request for `name`, framed by hand (a
/// `HelloRequest` is one length-delimited field).
fn say_hello(host: &str, name: &str) -> Req {
    assert!(name.len() < 128, "one-byte protobuf length");
    let mut message = vec![0x0a, name.len() as u8];
    message.extend_from_slice(name.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Req::get(host, "/helloworld.Greeter/SayHello")
        .method(Method::POST)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
}

/// The gRPC Greeter (h2c only) on an ephemeral port, and its Service `greeter` (no
/// `appProtocol`, so only the annotation can make the proxy speak HTTP/2 to it).
async fn start_greeter() -> (tokio::task::JoinHandle<()>, Vec<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the Greeter on 127.0.0.1:0");
    let port = listener.local_addr().expect("Greeter address").port();
    let task = tokio::spawn(async move {
        let _ = wasmgress_examples::greeter::serve(listener, Default::default()).await;
    });
    let objects = vec![
        service(
            NS,
            "greeter",
            &[ServicePort {
                name: Some("grpc"),
                port: 80,
                target: Port::Number(port),
            }],
        ),
        endpoint_slice(
            NS,
            "greeter",
            "greeter-slice",
            &[(Some("grpc"), port)],
            &[ready("127.0.0.1")],
        ),
    ];
    (task, objects)
}

/// `backend-protocol: GRPC` makes the proxy speak HTTP/2 (h2c) to the backend: the echo
/// backend reports HTTP/2.0 where its neighbour without the annotation gets HTTP/1.1, and the
/// h2c-only Greeter answers a gRPC call only through the annotated Ingress.
#[tokio::test]
async fn backend_protocol_grpc_speaks_http2_to_the_backend() {
    let (_backends, mut objects) = several(&["echo"]).await;
    let (greeter, greeter_objects) = start_greeter().await;
    objects.extend(greeter_objects);
    let grpc = [(BACKEND_PROTOCOL, "GRPC")];
    objects.push(ingress("echo-grpc", "echo-grpc.test", "echo", &grpc));
    objects.push(ingress("echo-plain", "echo-plain.test", "echo", &[]));
    objects.push(ingress(
        "greeter-grpc",
        "greeter-grpc.test",
        "greeter",
        &grpc,
    ));
    objects.push(ingress(
        "greeter-plain",
        "greeter-plain.test",
        "greeter",
        &[],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let mut h2 = gw.h2c().await;
    for (host, upstream) in [
        ("echo-grpc.test", "HTTP/2.0"),
        ("echo-plain.test", "HTTP/1.1"),
    ] {
        let r = h2
            .send(&Req::get(host, "/version"))
            .await
            .unwrap_or_else(|e| panic!("h2c GET http://{host}/version: {e}"));
        assert_eq!(r.version, Version::HTTP_2, "client side of {host}");
        assert_eq!(
            r.expect_echo()["version"],
            upstream,
            "HTTP version the echo backend received through {host}: {}",
            r.summary()
        );
    }
    // The upstream protocol belongs to the route, whatever the client speaks.
    let r = gw.get("echo-grpc.test", "/version").await;
    assert_eq!(
        r.expect_echo()["version"],
        "HTTP/2.0",
        "an HTTP/1.1 client through the GRPC Ingress: {}",
        r.summary()
    );

    let r = h2
        .send(&say_hello("greeter-grpc.test", "plugins"))
        .await
        .unwrap_or_else(|e| panic!("gRPC SayHello through greeter-grpc.test: {e}"));
    assert_eq!(
        r.status,
        200,
        "gRPC through the GRPC Ingress: {}",
        r.summary()
    );
    assert!(
        r.text().contains("Hello plugins"),
        "the Greeter's reply through the GRPC Ingress (grpc-status header {:?}): {}",
        r.header("grpc-status"),
        r.summary()
    );

    let r = h2
        .send(&say_hello("greeter-plain.test", "plugins"))
        .await
        .unwrap_or_else(|e| panic!("gRPC SayHello through greeter-plain.test: {e}"));
    assert!(
        !r.text().contains("Hello plugins"),
        "without the annotation the proxy speaks HTTP/1.1, which the h2c-only Greeter cannot \
         answer; yet it did: {}",
        r.summary()
    );
    assert!(
        r.status != 200 || r.header("grpc-status").is_some_and(|s| s != "0"),
        "the failed call must end with an error status: {} grpc-status={:?}",
        r.summary(),
        r.header("grpc-status")
    );
    greeter.abort();
}

/// `proxy-read-timeout: "1"` turns a backend that stays silent for 3 s into a 504 after about
/// a second, while a neighbour Ingress on the same backend (default 60 s) gets its 200;
/// `proxy-connect-timeout: "1"` gives up on an unreachable endpoint after about a second
/// while the default (5 s) is still waiting.
#[tokio::test]
async fn timeouts_change_what_happens_upstream() {
    let (_backends, mut objects) = several(&["echo"]).await;
    let hole = unresponsive_port().await;
    objects.push(service(
        NS,
        "blackhole",
        &[ServicePort {
            name: Some("http"),
            port: 80,
            target: Port::Number(hole.port),
        }],
    ));
    objects.push(endpoint_slice(
        NS,
        "blackhole",
        "blackhole-slice",
        &[(Some("http"), hole.port)],
        &[ready("127.0.0.1")],
    ));
    objects.push(ingress(
        "impatient",
        "impatient.test",
        "echo",
        &[(READ_TIMEOUT, "1")],
    ));
    objects.push(ingress("patient", "patient.test", "echo", &[]));
    objects.push(ingress(
        "quick-connect",
        "quick-connect.test",
        "blackhole",
        &[(CONNECT_TIMEOUT, "1")],
    ));
    objects.push(ingress(
        "slow-connect",
        "slow-connect.test",
        "blackhole",
        &[],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let timed = |host: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            let started = Instant::now();
            let r = gw.get(host, path).await;
            (r, started.elapsed())
        }
    };
    let (impatient, patient, quick, slow) = tokio::join!(
        timed("impatient.test", "/?delay_ms=3000"),
        timed("patient.test", "/?delay_ms=3000"),
        timed("quick-connect.test", "/"),
        tokio::time::timeout(Duration::from_millis(2500), timed("slow-connect.test", "/")),
    );

    let (r, took) = impatient;
    assert_eq!(
        r.status,
        504,
        "proxy-read-timeout \"1\" with a backend silent for 3 s: {}",
        r.summary()
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "the 504 should come after about 1 s, came after {took:?}"
    );
    let (r, took) = patient;
    assert_eq!(
        r.backend().as_deref(),
        Some("echo"),
        "the neighbour without proxy-read-timeout waits for the backend: {}",
        r.summary()
    );
    assert!(took >= Duration::from_millis(2900), "{took:?}");

    let (r, took) = quick;
    assert!(
        r.status == 502 || r.status == 504,
        "proxy-connect-timeout \"1\" to an endpoint that never accepts: {}",
        r.summary()
    );
    assert!(
        took < Duration::from_millis(2500),
        "proxy-connect-timeout \"1\" gave up only after {took:?}"
    );
    if let Ok((r, took)) = slow {
        panic!(
            "without proxy-connect-timeout (default 5 s) the unreachable endpoint should still \
             be awaited after 2.5 s, but after {took:?} came {}",
            r.summary()
        );
    }

    // Within the read timeout nothing changes.
    let r = gw.get("impatient.test", "/?delay_ms=200").await;
    assert_eq!(r.backend().as_deref(), Some("echo"), "{}", r.summary());
}

/// `wasmgress.io/request-headers` (YAML) and `wasmgress.io/response-headers` (JSON),
/// `upstream-vhost` and `x-forwarded-prefix` arrive at the backend and at the client; the
/// neighbour Ingress on the same backend is untouched.
#[tokio::test]
async fn header_edits_arrive_at_the_backend_and_the_client() {
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress(
        "edited",
        "edited.test",
        "echo",
        &[
            (
                REQUEST_HEADERS,
                "set:\n  X-Req-Set: from-annotation\nadd:\n  X-Req-Add: [one, two]\nremove:\n  - X-Drop-Me\n",
            ),
            (
                RESPONSE_HEADERS,
                r#"{"set": {"X-Resp-Set": "yes"}, "add": {"X-Resp-Add": ["a", "b"]}, "remove": ["X-Backend"]}"#,
            ),
            (UPSTREAM_VHOST, "internal.svc.local"),
            (X_FORWARDED_PREFIX, "/api"),
        ],
    ));
    objects.push(ingress("untouched", "untouched.test", "echo", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let request = |host: &str| {
        Req::get(host, "/h")
            .header("x-req-set", "from-client")
            .header("x-req-add", "from-client")
            .header("x-drop-me", "secret")
    };
    let r = gw.send(&request("edited.test")).await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.seen("x-req-set"), ["from-annotation"], "request `set`");
    assert_eq!(
        r.seen("x-req-add"),
        ["from-client", "one", "two"],
        "request `add` keeps the client's value"
    );
    assert!(r.seen("x-drop-me").is_empty(), "request `remove`");
    assert_eq!(r.seen("host"), ["internal.svc.local"], "upstream-vhost");
    assert_eq!(r.seen("x-forwarded-prefix"), ["/api"], "x-forwarded-prefix");
    assert_eq!(r.header("x-resp-set"), Some("yes"), "response `set`");
    let added: Vec<&str> = r
        .headers
        .get_all("x-resp-add")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(added, ["a", "b"], "response `add`");
    assert_eq!(
        r.header("x-backend"),
        None,
        "response `remove` of the echo backend's X-Backend"
    );

    let r = gw.send(&request("untouched.test")).await;
    assert_eq!(r.seen("x-req-set"), ["from-client"]);
    assert_eq!(r.seen("x-req-add"), ["from-client"]);
    assert_eq!(r.seen("x-drop-me"), ["secret"]);
    assert_eq!(r.seen("host"), ["untouched.test"]);
    assert!(r.seen("x-forwarded-prefix").is_empty());
    assert_eq!(r.header("x-resp-set"), None);
    assert_eq!(r.header("x-backend"), Some("echo"));
}

/// A `configuration-snippet` of recognised header directives is translated into header edits:
/// `proxy_set_header X-From-Snippet yes;` reaches the backend, `$host` is substituted, and
/// `more_set_headers` reaches the client.
#[tokio::test]
async fn a_configuration_snippet_of_header_directives_is_translated() {
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress(
        "snippet",
        "snippet.test",
        "echo",
        &[(
            CONFIGURATION_SNIPPET,
            "proxy_set_header X-From-Snippet yes;\n\
             proxy_set_header X-Snippet-Host $host;\n\
             more_set_headers 'X-Snippet-Response: done';\n",
        )],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let r = gw.get("snippet.test", "/s").await;
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.seen("x-from-snippet"),
        ["yes"],
        "proxy_set_header literal"
    );
    assert_eq!(
        r.seen("x-snippet-host"),
        ["snippet.test"],
        "proxy_set_header $host"
    );
    assert_eq!(
        r.header("x-snippet-response"),
        Some("done"),
        "more_set_headers on the response"
    );

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 0,
        "a translatable snippet is accepted; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_no_error_about(&stdout, NS, "snippet");
}

/// Snippets carrying Lua, `include`, `load_module`, a `}` breakout, a `#` comment hiding a
/// directive or a newline inside a value are refused, each with a diagnostic naming what was
/// refused. Each is designed so that executing it would show (a `pwned` body or an injected
/// header); instead the Ingress is rejected, its host answers `no route`, and a neighbour
/// keeps serving.
#[tokio::test]
async fn dangerous_snippets_are_refused_by_name_and_never_executed() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "lua-block",
            CONFIGURATION_SNIPPET,
            "access_by_lua_block { ngx.header['X-Pwned'] = 'yes' }",
            "`access_by_lua_block`",
        ),
        (
            "content-by-lua",
            CONFIGURATION_SNIPPET,
            "content_by_lua 'ngx.say(\"pwned\")';",
            "`content_by_lua`",
        ),
        (
            "include",
            CONFIGURATION_SNIPPET,
            "include /etc/nginx/pwned.conf;",
            "`include`",
        ),
        (
            "load-module",
            CONFIGURATION_SNIPPET,
            "load_module /tmp/pwned.so;",
            "`load_module`",
        ),
        (
            "breakout",
            CONFIGURATION_SNIPPET,
            "proxy_set_header X-A b; } location /pwned { return 200 pwned; ",
            "`}`",
        ),
        (
            "comment",
            CONFIGURATION_SNIPPET,
            "proxy_set_header X-A b; # more_set_headers 'X-Pwned: yes';",
            "`#`",
        ),
        (
            "newline",
            CONFIGURATION_SNIPPET,
            "more_set_headers 'X-A: a\nX-Pwned: yes';",
            "newline",
        ),
        (
            "server-lua",
            SERVER_SNIPPET,
            "location /pwned { content_by_lua_block { ngx.say('pwned') } }",
            "`location`",
        ),
    ];
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress("neighbour", "neighbour.test", "echo", &[]));
    let m = Manifests::new();
    m.write("good.yaml", &objects);
    for (name, key, snippet, _) in cases {
        m.write(
            &format!("{name}.yaml"),
            &[ingress(
                name,
                &format!("{name}.snippet.test"),
                "echo",
                &[(key, snippet)],
            )],
        );
    }
    let gw = Wasmgress::start(&m, &[]).await;

    let mut wrong = Vec::new();
    for (name, _, _, _) in cases {
        let host = format!("{name}.snippet.test");
        for path in ["/", "/pwned"] {
            let r = gw.get(&host, path).await;
            // Only the proxy's own `no route` answer: no `pwned` output, no injected header.
            if describe(&r) != "404" || r.header("x-pwned").is_some() {
                wrong.push(format!("GET http://{host}{path}: {}", r.summary()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "an Ingress with a refused snippet must not be served at all (expected `no route`):\n  {}",
        wrong.join("\n  ")
    );
    gw.assert_routes(&[("neighbour.test", "/", "echo")]).await;
    for (name, _, _, _) in cases {
        assert!(
            gw.stderr_mentions(&format!("Ingress {NS}/{name}:")).await,
            "no diagnostic on stderr names the rejected Ingress {name}"
        );
    }

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 1,
        "refused snippets reject their Ingresses; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for (name, key, _, needle) in cases {
        let line = diagnostic(&stdout, "error", name, key);
        assert!(
            line.contains(needle),
            "the diagnostic for {name} should name {needle}: {line}"
        );
    }
    assert_no_error_about(&stdout, NS, "neighbour");
}

/// The `redirect` plugin's annotations: `permanent-redirect` (+ `-code`), `app-root`,
/// `rewrite-target` with `use-regex` capture groups, `ssl-redirect: "false"` on a TLS host and
/// `force-ssl-redirect` on a host without TLS.
#[tokio::test]
async fn redirect_plugin_annotations_redirect_and_rewrite() {
    let ca = TestCa::new();
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ca.leaf(&["secure.test"]).secret("secure-tls", false));
    objects.push(ca.leaf(&["optout.test"]).secret("optout-tls", false));
    objects.push(ingress(
        "moved",
        "moved.test",
        "echo",
        &[(PERMANENT_REDIRECT, "https://new.example.com$request_uri")],
    ));
    objects.push(ingress(
        "moved-308",
        "moved-308.test",
        "echo",
        &[
            (PERMANENT_REDIRECT, "https://other.example.com/landing"),
            (PERMANENT_REDIRECT_CODE, "308"),
        ],
    ));
    objects.push(ingress(
        "app-root",
        "app-root.test",
        "echo",
        &[(APP_ROOT, "/app1")],
    ));
    objects.push(
        Ingress::new("rewrite")
            .annotation(REWRITE_TARGET, "/$2")
            .annotation(USE_REGEX, "true")
            .rule(
                Some("rewrite.test"),
                &[implementation_specific("/something(/|$)(.*)", "echo")],
            )
            .build(),
    );
    objects.push(
        Ingress::new("secure")
            .tls(&["secure.test"], "secure-tls")
            .rule(Some("secure.test"), &[prefix("/", "echo")])
            .build(),
    );
    objects.push(
        Ingress::new("optout")
            .annotation(SSL_REDIRECT, "false")
            .tls(&["optout.test"], "optout-tls")
            .rule(Some("optout.test"), &[prefix("/", "echo")])
            .build(),
    );
    objects.push(ingress(
        "forced",
        "forced.test",
        "echo",
        &[(FORCE_SSL_REDIRECT, "true")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    let r = gw.get("moved.test", "/a/b?c=1").await;
    assert_redirect(
        &r,
        301,
        "https://new.example.com/a/b?c=1",
        "permanent-redirect with $request_uri",
    );
    let r = gw.get("moved-308.test", "/x").await;
    assert_redirect(
        &r,
        308,
        "https://other.example.com/landing",
        "permanent-redirect-code 308",
    );

    let r = gw.get("app-root.test", "/").await;
    assert_redirect(&r, 302, "/app1", "app-root on /");
    let r = gw.get("app-root.test", "/app1/page").await;
    assert_eq!(
        r.expect_echo()["path"],
        "/app1/page",
        "app-root leaves other paths alone"
    );

    let r = gw.get("rewrite.test", "/something/new/x?a=1").await;
    let echo = r.expect_echo();
    assert_eq!(
        echo["path"],
        "/new/x",
        "rewrite-target /$2: {}",
        r.summary()
    );
    assert_eq!(echo["query"], "a=1", "rewrite keeps the query");
    let r = gw.get("rewrite.test", "/something").await;
    assert_eq!(
        r.expect_echo()["path"],
        "/",
        "rewrite-target with an empty $2"
    );

    let r = gw.get("secure.test", "/p?q=1").await;
    assert_redirect(
        &r,
        308,
        "https://secure.test/p?q=1",
        "a TLS host redirects plain HTTP by default",
    );
    let r = gw.get("optout.test", "/p").await;
    assert_eq!(
        r.backend().as_deref(),
        Some("echo"),
        "ssl-redirect \"false\" serves plain HTTP: {}",
        r.summary()
    );
    let r = gw.get("forced.test", "/p?q=1").await;
    assert_redirect(
        &r,
        308,
        "https://forced.test/p?q=1",
        "force-ssl-redirect on a host without TLS",
    );
}

/// The example `api-key` plugin, loaded from `--plugin-dir` and attached with
/// `wasmgress.io/plugins`, answers 401 without a valid key and passes (without the key) with
/// one; its route's neighbours need no key; a missing `keys` annotation rejects that Ingress;
/// without `--plugin-dir` the attaching Ingress is rejected naming the plugin.
#[tokio::test]
async fn the_api_key_example_plugin_guards_its_route() {
    let plugins = PluginDir::with(&["api-key"]);
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress(
        "keyed",
        "keyed.test",
        "echo",
        &[(PLUGINS, "api-key"), (API_KEY_KEYS, "s3cret-1, s3cret-2")],
    ));
    objects.push(ingress("open", "open.test", "echo", &[]));
    objects.push(ingress(
        "keyless",
        "keyless.test",
        "echo",
        &[(PLUGINS, "api-key")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    for (what, req) in [
        ("no key", Req::get("keyed.test", "/private")),
        (
            "a wrong key",
            Req::get("keyed.test", "/private").header("x-api-key", "s3cret-3"),
        ),
    ] {
        let r = gw.send(&req).await;
        assert_eq!(r.status, 401, "{what}: {}", r.summary());
        assert_eq!(r.header("www-authenticate"), Some("ApiKey"), "{what}");
        assert_eq!(r.backend(), None, "{what}: the backend must not be reached");
    }
    let r = gw
        .send(&Req::get("keyed.test", "/private").header("x-api-key", "s3cret-2"))
        .await;
    assert_eq!(
        r.backend().as_deref(),
        Some("echo"),
        "a valid key: {}",
        r.summary()
    );
    assert!(
        r.seen("x-api-key").is_empty(),
        "the key is stripped before the backend: {:?}",
        r.seen("x-api-key")
    );
    gw.assert_routes(&[("open.test", "/", "echo"), ("keyless.test", "/", "404")])
        .await;

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(
        code, 1,
        "keyless is rejected; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    diagnostic(&stdout, "error", "keyless", API_KEY_KEYS);
    assert_no_error_about(&stdout, NS, "keyed");

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 1,
        "without --plugin-dir; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = diagnostic(&stdout, "error", "keyed", PLUGINS);
    assert!(line.contains("api-key"), "names the missing plugin: {line}");
}

/// Plugins that loop forever (`spin`), trap (`trap`) or grow memory without bound (`grow`)
/// fail only their own requests, with 500 and quickly, while requests to another route,
/// sent at the same time, all get 200; with `fail-open: "true"` the request goes through.
#[tokio::test]
async fn misbehaving_plugins_fail_only_their_own_requests() {
    const BAD: [&str; 3] = ["spin", "trap", "grow"];
    let plugins = PluginDir::with(&BAD);
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress("good", "good.test", "echo", &[]));
    for p in BAD {
        objects.push(ingress(p, &format!("{p}.test"), "echo", &[(PLUGINS, p)]));
        let fail_open = format!("wasmgress.io/plugin.{p}.fail-open");
        objects.push(ingress(
            &format!("{p}-open"),
            &format!("{p}-open.test"),
            "echo",
            &[(PLUGINS, p), (&fail_open, "true")],
        ));
    }
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let mut gw = Wasmgress::start(&m, &plugins.args()).await;
    let before = Metrics::scrape(&gw).await;

    const PER_PLUGIN: usize = 4;
    let timed = |host: String| {
        let gw = &gw;
        async move {
            let started = Instant::now();
            let r = gw.get(&host, "/").await;
            (host, r, started.elapsed())
        }
    };
    let bad = join_all(
        BAD.iter()
            .flat_map(|p| std::iter::repeat_n(format!("{p}.test"), PER_PLUGIN))
            .map(timed),
    );
    let good = join_all((0..30).map(|_| timed("good.test".to_owned())));
    let (bad, good) = tokio::join!(bad, good);

    let mut wrong = Vec::new();
    for (host, r, took) in &bad {
        let plugin = host.trim_end_matches(".test");
        if r.status != 500
            || !r.text().contains(&format!("plugin {plugin} failed"))
            || *took > PLUGIN_FAILURE_LIMIT
        {
            wrong.push(format!(
                "GET http://{host}/ after {took:?}: {}",
                r.summary()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a failing plugin must answer 500 `plugin NAME failed` within {PLUGIN_FAILURE_LIMIT:?}:\n  {}",
        wrong.join("\n  ")
    );
    let wrong: Vec<String> = good
        .iter()
        .filter(|(_, r, _)| r.backend().as_deref() != Some("echo"))
        .map(|(_, r, took)| format!("after {took:?}: {}", r.summary()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests to the good route, sent alongside the failing ones, did not get \
         the backend's 200:\n  {}",
        wrong.len(),
        good.len(),
        wrong.join("\n  ")
    );

    for p in BAD {
        let host = format!("{p}-open.test");
        let started = Instant::now();
        let r = gw.get(&host, "/").await;
        assert_eq!(
            r.backend().as_deref(),
            Some("echo"),
            "fail-open \"true\" lets the request through when {p} fails: {}",
            r.summary()
        );
        assert!(
            started.elapsed() < PLUGIN_FAILURE_LIMIT,
            "{host}: {:?}",
            started.elapsed()
        );
    }

    // Each failure was what it should be, and counted against its plugin: the deadline for
    // `spin`, a trap for `trap`, the memory cap for `grow`.
    let after = Metrics::scrape(&gw).await;
    let moved = |name: &str, plugin: &str| {
        after.plugin(name, plugin).unwrap_or(0) - before.plugin(name, plugin).unwrap_or(0)
    };
    let failures = PER_PLUGIN as u64 + 1;
    for (plugin, counters) in [
        ("spin", &["wasmgress_plugin_deadline_hits_total"][..]),
        ("trap", &["wasmgress_plugin_traps_total"][..]),
        ("grow", &["wasmgress_plugin_memory_failures_total"][..]),
    ] {
        let counted: u64 = counters.iter().map(|c| moved(c, plugin)).sum();
        assert!(
            counted >= failures,
            "{counters:?} for plugin {plugin} should count its {failures} failed calls, \
             counted {counted}; before:\n{}\nafter:\n{}",
            before.text,
            after.text
        );
    }
    assert!(gw.is_running(), "wasmgress must survive its plugins");
    gw.assert_routes(&[("good.test", "/", "echo")]).await;
}

/// A plugin that loops or traps in `configure` (`wasmgress.io/plugin.NAME.at: configure`)
/// rejects only the Ingress it was configured for, with a diagnostic naming the plugin.
#[tokio::test]
async fn plugins_failing_in_configure_reject_only_their_ingress() {
    let plugins = PluginDir::with(&["spin", "trap"]);
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress("good", "good.test", "echo", &[]));
    objects.push(ingress(
        "spin-configure",
        "spin-configure.test",
        "echo",
        &[
            (PLUGINS, "spin"),
            ("wasmgress.io/plugin.spin.at", "configure"),
        ],
    ));
    objects.push(ingress(
        "trap-configure",
        "trap-configure.test",
        "echo",
        &[
            (PLUGINS, "trap"),
            ("wasmgress.io/plugin.trap.at", "configure"),
        ],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let started = Instant::now();
    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for (name, plugin, why) in [
        ("spin-configure", "spin", "deadline"),
        ("trap-configure", "trap", "trap"),
    ] {
        let line = diagnostic(&stdout, "error", name, "");
        assert!(
            line.contains(plugin) && line.contains(why),
            "the diagnostic for {name} should name plugin {plugin} and say {why}: {line}"
        );
    }
    assert_no_error_about(&stdout, NS, "good");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "validate took {:?}",
        started.elapsed()
    );

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    gw.assert_routes(&[
        ("good.test", "/", "echo"),
        ("spin-configure.test", "/", "404"),
        ("trap-configure.test", "/", "404"),
    ])
    .await;
}

/// `wasmgress.io/plugin.NAME.sha256` pins the plugin binary: a wrong pin rejects the Ingress
/// (naming the annotation and the loaded binary's digest), the right one is served.
#[tokio::test]
async fn a_sha256_pin_mismatch_rejects_the_ingress() {
    let plugins = PluginDir::with(&["api-key"]);
    let actual = sha256_hex(&wasm("api-key"));
    let wrong = "0".repeat(64);
    let (_backends, mut objects) = several(&["echo"]).await;
    for (name, pin) in [
        ("wrong-pin", wrong.as_str()),
        ("right-pin", actual.as_str()),
    ] {
        objects.push(ingress(
            name,
            &format!("{name}.test"),
            "echo",
            &[
                (PLUGINS, "api-key"),
                (API_KEY_KEYS, "k1"),
                (API_KEY_SHA256, pin),
            ],
        ));
    }
    objects.push(ingress("open", "open.test", "echo", &[]));
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = diagnostic(&stdout, "error", "wrong-pin", API_KEY_SHA256);
    assert!(
        line.contains(&actual),
        "the diagnostic should show the loaded binary's SHA-256 {actual}: {line}"
    );
    assert_no_error_about(&stdout, NS, "right-pin");

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    gw.assert_routes(&[("wrong-pin.test", "/", "404"), ("open.test", "/", "echo")])
        .await;
    let r = gw.get("right-pin.test", "/").await;
    assert_eq!(
        r.status,
        401,
        "the correctly pinned plugin runs: {}",
        r.summary()
    );
    let r = gw
        .send(&Req::get("right-pin.test", "/").header("x-api-key", "k1"))
        .await;
    assert_eq!(r.backend().as_deref(), Some("echo"), "{}", r.summary());
}

/// Annotations under `nginx.ingress.kubernetes.io/` or `wasmgress.io/` that no attached plugin
/// owns are reported as warnings (in `validate` output and the log) without rejecting the
/// Ingress.
#[tokio::test]
async fn unknown_annotations_warn_without_rejecting() {
    let plugins = PluginDir::with(&["api-key"]);
    let unknown = [
        "nginx.ingress.kubernetes.io/enable-magic",
        "wasmgress.io/teleport",
        // Owned by a loaded plugin this Ingress does not attach.
        API_KEY_KEYS,
    ];
    let (_backends, mut objects) = several(&["echo"]).await;
    let mut annotations: Vec<(&str, &str)> = unknown.iter().map(|k| (*k, "true")).collect();
    annotations.push((READ_TIMEOUT, "30"));
    objects.push(ingress("curious", "curious.test", "echo", &annotations));
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &plugins.args()).await;
    assert_eq!(
        code, 0,
        "unknown annotations must not reject; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_no_error_about(&stdout, NS, "curious");
    for key in unknown {
        diagnostic(&stdout, "warning", "curious", key);
    }
    assert!(
        !stdout
            .lines()
            .any(|l| l.contains(&format!("metadata.annotations[{READ_TIMEOUT}]"))),
        "the owned proxy-read-timeout must not be reported:\n{stdout}"
    );

    let gw = Wasmgress::start(&m, &plugins.args()).await;
    gw.assert_routes(&[("curious.test", "/", "echo")]).await;
    assert!(
        gw.stderr_mentions("nginx.ingress.kubernetes.io/enable-magic")
            .await,
        "the warning should be logged too"
    );
}

/// Routes whose annotations only produce static policy (protocol, timeouts, header edits, a
/// snippet) cost zero Wasm calls per request: the plugin call counters on `/metrics` do not
/// move over 50 requests. On a route with the `api-key` hook, the hook counter moves by
/// exactly the number of requests.
#[tokio::test]
async fn static_policies_make_zero_wasm_calls_per_request() {
    const N: usize = 50;
    let plugins = PluginDir::with(&["api-key"]);
    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress(
        "static",
        "static.test",
        "echo",
        &[
            (BACKEND_PROTOCOL, "HTTP"),
            (READ_TIMEOUT, "30"),
            (CONNECT_TIMEOUT, "5"),
            (REQUEST_HEADERS, "set:\n  X-Static: yes\n"),
            (RESPONSE_HEADERS, r#"{"set": {"X-Static-Response": "yes"}}"#),
            (X_FORWARDED_PREFIX, "/static"),
            (
                CONFIGURATION_SNIPPET,
                "proxy_set_header X-Snippet-Host $host;",
            ),
        ],
    ));
    objects.push(ingress(
        "keyed",
        "keyed.test",
        "echo",
        &[(PLUGINS, "api-key"), (API_KEY_KEYS, "k1")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let before = Metrics::scrape(&gw).await;
    let calls_before = before.per_plugin("wasmgress_plugin_calls_total");
    for builtin in ["backend-protocol", "timeouts", "headers", "snippet"] {
        assert!(
            before.plugin("wasmgress_plugin_calls_total", builtin) > Some(0),
            "built-in {builtin} ran at compile time, so its call counter should be exposed and \
             above 0:\n{}",
            before.text
        );
    }
    let mut conn = gw.h1().await;
    for i in 0..N {
        let r = conn
            .send(&Req::get("static.test", &format!("/n/{i}")))
            .await
            .unwrap_or_else(|e| panic!("static request {i}: {e}"));
        assert_eq!(
            r.seen("x-static"),
            ["yes"],
            "static request {i}: {}",
            r.summary()
        );
        assert_eq!(r.seen("x-snippet-host"), ["static.test"]);
        assert_eq!(r.header("x-static-response"), Some("yes"));
    }
    let after_static = Metrics::scrape(&gw).await;
    assert_eq!(
        after_static.per_plugin("wasmgress_plugin_calls_total"),
        calls_before,
        "{N} requests on a route with only static policies made Wasm calls"
    );
    assert_eq!(
        after_static.per_plugin("wasmgress_plugin_hook_calls_total"),
        before.per_plugin("wasmgress_plugin_hook_calls_total"),
        "{N} requests on a route with only static policies made hook calls"
    );

    let mut conn = gw.h1().await;
    for i in 0..N {
        let mut req = Req::get("keyed.test", &format!("/n/{i}"));
        if i % 2 == 0 {
            req = req.header("x-api-key", "k1");
        }
        let r = conn
            .send(&req)
            .await
            .unwrap_or_else(|e| panic!("keyed request {i}: {e}"));
        let want = if i % 2 == 0 { 200 } else { 401 };
        assert_eq!(r.status, want, "keyed request {i}: {}", r.summary());
    }
    let after_keyed = Metrics::scrape(&gw).await;
    let hooks = |m: &Metrics| m.plugin("wasmgress_plugin_hook_calls_total", "api-key");
    assert_eq!(
        hooks(&after_keyed)
            .zip(hooks(&after_static))
            .map(|(a, b)| a - b),
        Some(N as u64),
        "wasmgress_plugin_hook_calls_total{{plugin=\"api-key\"}} should move by exactly {N}; \
         before:\n{}\nafter:\n{}",
        after_static.text,
        after_keyed.text
    );
    let builtins_only = |m: &Metrics| -> Vec<(String, u64)> {
        m.per_plugin("wasmgress_plugin_calls_total")
            .into_iter()
            .filter(|(p, _)| p != "api-key")
            .collect()
    };
    assert_eq!(
        builtins_only(&after_keyed),
        builtins_only(&after_static),
        "the api-key route's requests must not call the built-ins"
    );
}

/// The plugin folder is watched like the manifests: a plugin file replaced with other bytes
/// is reloaded (an Ingress pinned to the new bytes' SHA-256 becomes served) and a plugin file
/// added later becomes available, in the same process.
#[tokio::test]
async fn a_replaced_plugin_file_is_reloaded() {
    let plugins = PluginDir::with(&["set-header"]);
    let original = wasm("set-header");
    let replacement = with_custom_section(&original, "wasmgress-e2e", b"replacement");
    let new_sha = sha256_hex(&replacement);
    assert_ne!(new_sha, sha256_hex(&original));

    let (_backends, mut objects) = several(&["echo"]).await;
    objects.push(ingress(
        "loose",
        "loose.test",
        "echo",
        &[
            (PLUGINS, "set-header"),
            ("wasmgress.io/plugin.set-header.value", "loose"),
        ],
    ));
    objects.push(ingress(
        "pinned",
        "pinned.test",
        "echo",
        &[
            (PLUGINS, "set-header"),
            ("wasmgress.io/plugin.set-header.value", "pinned"),
            ("wasmgress.io/plugin.set-header.sha256", &new_sha),
        ],
    ));
    objects.push(ingress(
        "keyed",
        "keyed.test",
        "echo",
        &[(PLUGINS, "api-key"), (API_KEY_KEYS, "k1")],
    ));
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let mut gw = Wasmgress::start(&m, &plugins.args()).await;
    let pid = gw.pid();

    let r = gw.get("loose.test", "/").await;
    let seen = r.seen("x-seen-by");
    assert!(
        seen.len() == 1 && seen[0].starts_with("loose-"),
        "set-header's hook ran on loose.test: {seen:?} ({})",
        r.summary()
    );
    gw.assert_routes(&[("pinned.test", "/", "404"), ("keyed.test", "/", "404")])
        .await;

    plugins.write("set-header.wasm", &replacement);
    let r = gw
        .poll_until(
            "pinned.test",
            "/",
            "the Ingress pinned to the replaced plugin file to be served",
            |r| r.backend().is_some(),
        )
        .await;
    let seen = r.seen("x-seen-by");
    assert!(
        seen.len() == 1 && seen[0].starts_with("pinned-"),
        "the replaced plugin's hook ran on pinned.test: {seen:?}"
    );
    let r = gw.get("loose.test", "/").await;
    assert!(
        r.seen("x-seen-by")
            .first()
            .is_some_and(|v| v.starts_with("loose-")),
        "loose.test after the reload: {}",
        r.summary()
    );

    plugins.write("api-key.wasm", &wasm("api-key"));
    gw.poll_until(
        "keyed.test",
        "/",
        "the Ingress attaching a plugin file added later to answer 401",
        |r| r.status == 401,
    )
    .await;
    assert!(
        gw.is_running(),
        "reloading plugins must not restart wasmgress"
    );
    assert_eq!(gw.pid(), pid, "same process throughout");
}
