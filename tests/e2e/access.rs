//! Access control through the real binary: the built-in plugins `ip-access`
//! (`allowlist-source-range`, its old name `whitelist-source-range`, `denylist-source-range`,
//! `satisfy`), `basic-auth` (`auth-type`, `auth-secret`, `auth-secret-type`, `auth-realm`) and
//! `body-size` (`proxy-body-size`), with ingress-nginx's annotation names; and a component built
//! against the frozen plugin ABI 0.1.0 running beside a 0.2.0 one.
//!
//! Source ranges are judged on the address the request edge computed: the PROXY protocol
//! source, a trusted `X-Forwarded-For`, or the TCP peer when nobody is trusted. Password files
//! are made at test time by Debian's real `htpasswd` and requests are sent by the real `curl`;
//! both tools are required (a missing one fails the test, it is never skipped). A refused
//! request (401, 403, 413) must never reach the backend, which a recording backend counts.

use std::process::Output;

use base64::Engine as _;
use http::Method;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::harness::certs::TestCa;
use crate::harness::manifests::{NS, ServicePort, endpoint_slice, ready, service};
use crate::harness::plugins::PluginDir;
use crate::harness::process::{RELOAD_LIMIT, validate, validate_error};
use crate::harness::raw::exchange;
use crate::harness::recorder::Recorder;
use crate::harness::{Ingress, Manifests, Port, Req, Resp, Wasmgress, prefix};

const ALLOW: &str = "nginx.ingress.kubernetes.io/allowlist-source-range";
const WHITELIST: &str = "nginx.ingress.kubernetes.io/whitelist-source-range";
const DENY: &str = "nginx.ingress.kubernetes.io/denylist-source-range";
const SATISFY: &str = "nginx.ingress.kubernetes.io/satisfy";
const AUTH_TYPE: &str = "nginx.ingress.kubernetes.io/auth-type";
const AUTH_SECRET: &str = "nginx.ingress.kubernetes.io/auth-secret";
const AUTH_SECRET_TYPE: &str = "nginx.ingress.kubernetes.io/auth-secret-type";
const AUTH_REALM: &str = "nginx.ingress.kubernetes.io/auth-realm";
const BODY_SIZE: &str = "nginx.ingress.kubernetes.io/proxy-body-size";
const PLUGINS: &str = "wasmgress.io/plugins";

/// Trust loopback (where the tests connect from) to say who the client is.
const TRUST_LOOPBACK: [&str; 3] = [
    "--use-forwarded-headers",
    "--proxy-real-ip-cidr",
    "127.0.0.1/32",
];

/// An Ingress `name` for `host`, everything to Service `service`, with `annotations`.
fn ingress(name: &str, host: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    annotations
        .iter()
        .fold(Ingress::new(name), |ing, (k, v)| ing.annotation(k, v))
        .rule(Some(host), &[prefix("/", service)])
        .build()
}

/// The recording backend "app" and a folder holding it and `ingresses`.
async fn app_with(ingresses: Vec<Value>) -> (Recorder, Manifests) {
    let rec = Recorder::start("app").await;
    let mut objects = rec.objects();
    objects.extend(ingresses);
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    (rec, m)
}

// ---------------------------------------------------------------------------------------------
// Source ranges

/// allow.test admits 10/8, one plain address and 2001:db8::/32; old.test says the same with
/// the old annotation name; both.test sets both names, and the new one wins (as in
/// ingress-nginx); deny.test denies 10.9/16 inside a wider allow list; denyonly.test
/// only denies 203.0.113.0/24; loop.test admits only 127.0.0.1.
fn range_ingresses() -> Vec<Value> {
    vec![
        ingress(
            "allow",
            "allow.test",
            "app",
            &[(ALLOW, "10.0.0.0/8, 192.168.1.7,2001:db8::/32")],
        ),
        ingress("old", "old.test", "app", &[(WHITELIST, "10.0.0.0/8")]),
        ingress(
            "both",
            "both.test",
            "app",
            &[(ALLOW, "10.0.0.0/8"), (WHITELIST, "0.0.0.0/0")],
        ),
        ingress(
            "deny",
            "deny.test",
            "app",
            &[(ALLOW, "10.0.0.0/8"), (DENY, "10.9.0.0/16")],
        ),
        ingress(
            "deny-only",
            "denyonly.test",
            "app",
            &[(DENY, "203.0.113.0/24")],
        ),
        ingress("loop", "loop.test", "app", &[(ALLOW, "127.0.0.1")]),
    ]
}

/// (client address, host, expected status) for a client the edge believes.
const RANGE_CASES: &[(&str, &str, u16)] = &[
    ("10.1.2.3", "allow.test", 200),
    ("192.168.1.7", "allow.test", 200),
    ("192.168.1.8", "allow.test", 403),
    ("203.0.113.9", "allow.test", 403),
    ("2001:db8::7", "allow.test", 200),
    ("2001:db9::7", "allow.test", 403),
    ("10.1.2.3", "old.test", 200),
    ("203.0.113.9", "old.test", 403),
    ("10.1.2.3", "both.test", 200),
    ("203.0.113.9", "both.test", 403),
    ("10.1.2.3", "deny.test", 200),
    // The deny list is checked first: inside the allow list does not help.
    ("10.9.1.1", "deny.test", 403),
    ("10.9.1.1", "allow.test", 200),
    ("203.0.113.9", "denyonly.test", 403),
    ("198.51.100.1", "denyonly.test", 200),
    // The believed address replaces the loopback peer, also for a loopback-only list.
    ("10.1.2.3", "loop.test", 403),
];

/// How a test tells the binary who the client is.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A PROXY protocol v1 header naming the client (`--use-proxy-protocol`).
    ProxyProtocol,
    /// `X-Forwarded-For` from a trusted loopback peer.
    ForwardedFor,
}

/// `GET http://host/` from `client`, as `via` says it.
async fn from(gw: &Wasmgress, via: Via, client: &str, host: &str) -> Resp {
    match via {
        Via::ProxyProtocol => {
            let (family, to) = if client.contains(':') {
                ("TCP6", "::1")
            } else {
                ("TCP4", "127.0.0.1")
            };
            let request = format!(
                "PROXY {family} {client} {to} 5000 80\r\nGET / HTTP/1.1\r\nHost: {host}\r\n\r\n"
            );
            exchange(gw.http, request.as_bytes()).await
        }
        Via::ForwardedFor => {
            gw.send(&Req::get(host, "/").header("x-forwarded-for", client))
                .await
        }
    }
}

/// Runs every case of `cases` through `via`; reports all wrong answers at once, and checks
/// that exactly the admitted requests reached the backend.
async fn check_ranges(gw: &Wasmgress, rec: &Recorder, via: Via, cases: &[(&str, &str, u16)]) {
    let before = rec.arrived();
    let mut wrong = Vec::new();
    for &(client, host, want) in cases {
        let r = from(gw, via, client, host).await;
        let reached = r.backend().is_some();
        if r.status != want || reached != (want == 200) {
            wrong.push(format!(
                "{client} -> {host}: expected {want}, got {}",
                r.summary()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{via:?}: {} of {} answers wrong:\n  {}",
        wrong.len(),
        cases.len(),
        wrong.join("\n  ")
    );
    let admitted = cases.iter().filter(|c| c.2 == 200).count();
    assert_eq!(
        rec.arrived() - before,
        admitted,
        "{via:?}: only admitted requests may reach the backend"
    );
}

#[tokio::test]
async fn source_ranges_judge_the_proxy_protocol_source() {
    let (rec, m) = app_with(range_ingresses()).await;
    let gw = Wasmgress::start(&m, &["--use-proxy-protocol"]).await;
    check_ranges(&gw, &rec, Via::ProxyProtocol, RANGE_CASES).await;

    // Without --use-forwarded-headers, an X-Forwarded-For behind the PROXY header is the
    // client's own claim and changes nothing.
    let request = "PROXY TCP4 203.0.113.9 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\n\
                   Host: allow.test\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n";
    let r = exchange(gw.http, request.as_bytes()).await;
    assert_eq!(
        r.status,
        403,
        "outside source claiming inside: {}",
        r.summary()
    );
    assert_eq!(r.backend(), None, "the backend must not be reached");
}

#[tokio::test]
async fn source_ranges_judge_a_trusted_forwarded_for() {
    let (rec, m) = app_with(range_ingresses()).await;
    let gw = Wasmgress::start(&m, &TRUST_LOOPBACK).await;
    check_ranges(&gw, &rec, Via::ForwardedFor, RANGE_CASES).await;

    // A chain, as balancers append to it: the client is the rightmost address that is not a
    // trusted proxy (nginx's real_ip_recursive), so an inside address a client wrote in front
    // of the one its balancer saw opens nothing.
    let chains = [
        ("10.1.2.3, 203.0.113.9", "allow.test", 403),
        ("203.0.113.9, 10.1.2.3", "allow.test", 200),
        ("10.1.2.3, 127.0.0.1", "allow.test", 200),
    ];
    check_ranges(&gw, &rec, Via::ForwardedFor, &chains).await;
}

/// Nobody is trusted: the TCP peer (127.0.0.1) is the client whatever its headers claim, so
/// claiming an inside address does not open an allow list, and claiming an outside one does
/// not close a loopback list.
#[tokio::test]
async fn an_untrusted_forwarded_for_cannot_claim_an_inside_address() {
    let (rec, m) = app_with(range_ingresses()).await;
    let gw = Wasmgress::start(&m, &[]).await;
    for host in ["allow.test", "old.test", "deny.test"] {
        let r = gw
            .send(
                &Req::get(host, "/")
                    .header("x-forwarded-for", "10.1.2.3")
                    .header("x-real-ip", "10.1.2.3"),
            )
            .await;
        assert_eq!(r.status, 403, "{host} claiming 10.1.2.3: {}", r.summary());
        assert_eq!(r.backend(), None, "{host}: the backend must not be reached");
    }
    let r = gw
        .send(&Req::get("loop.test", "/").header("x-forwarded-for", "203.0.113.9"))
        .await;
    assert_eq!(
        r.backend().as_deref(),
        Some("app"),
        "loop.test: {}",
        r.summary()
    );
    assert_eq!(
        rec.arrived(),
        1,
        "only the loop.test request reached the backend"
    );
}

/// A range that is not a CIDR rejects its Ingress (404, never served without the list), the
/// binary says so, `validate` names the annotation, and a neighbour keeps serving.
#[tokio::test]
async fn a_malformed_range_rejects_its_ingress() {
    let (rec, m) = app_with(vec![
        ingress(
            "bad-range",
            "bad.test",
            "app",
            &[(ALLOW, "10.0.0.0/33, office")],
        ),
        ingress("bad-deny", "baddeny.test", "app", &[(DENY, "10.0.0/8")]),
        ingress("fine", "fine.test", "app", &[(ALLOW, "127.0.0.1/32")]),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;
    gw.assert_routes(&[
        ("bad.test", "/", "404"),
        ("baddeny.test", "/", "404"),
        ("fine.test", "/", "app"),
    ])
    .await;
    assert_eq!(rec.arrived(), 1, "only fine.test reached the backend");
    for name in ["bad-range", "bad-deny"] {
        assert!(
            gw.stderr_mentions(&format!("Ingress {NS}/{name}")).await,
            "no diagnostic on stderr names the rejected Ingress {name}"
        );
    }

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "bad-range", ALLOW);
    assert!(
        line.contains("10.0.0.0/33") && line.contains("office"),
        "the diagnostic names both bad entries: {line}"
    );
    validate_error(&stdout, NS, "bad-deny", DENY);
}

// ---------------------------------------------------------------------------------------------
// Real tools: htpasswd and curl

/// Runs `program args`, failing the test with `install` advice when it is not installed.
async fn run_tool(program: &str, args: &[&str], install: &str) -> Output {
    Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}): these tests need the real tool; {install}")
        })
}

/// `user:hash` as Debian's `htpasswd -n -b FLAG user password` writes it.
async fn htpasswd(flag: &str, user: &str, password: &str) -> String {
    let out = run_tool(
        "htpasswd",
        &["-n", "-b", flag, user, password],
        "install Debian's apache2-utils (/usr/bin/htpasswd)",
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim().to_owned();
    assert!(
        out.status.success() && line.starts_with(&format!("{user}:")),
        "htpasswd {flag} {user}: {} stdout={text:?} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    line
}

/// An htpasswd line made with `flag`, checked to be the hash scheme `scheme` (so each case
/// covers the format it claims to).
async fn hashed(flag: &str, scheme: &str, user: &str, password: &str) -> String {
    let line = htpasswd(flag, user, password).await;
    let hash = &line[user.len() + 1..];
    assert!(
        hash.starts_with(scheme),
        "htpasswd {flag} should write a {scheme} hash, wrote {hash:?}"
    );
    line
}

/// What `curl -i` got back.
#[derive(Debug)]
struct Curled {
    status: u16,
    /// Response headers, names in lower case.
    headers: Vec<(String, String)>,
    body: String,
}

impl Curled {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Which echo backend answered, if one did.
    fn backend(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v["backend"].as_str().map(str::to_owned)
    }

    fn summary(&self) -> String {
        let body: String = self.body.chars().take(200).collect();
        format!(
            "{} www-authenticate={:?} body={body:?}",
            self.status,
            self.header("www-authenticate")
        )
    }
}

/// `curl -i http://PLAIN_LISTENER/` with `Host: host`, `--user user:password` when given, and
/// `extra` arguments.
async fn curl(gw: &Wasmgress, host: &str, user: Option<&str>, extra: &[&str]) -> Curled {
    let url = format!("http://{}/", gw.http);
    let host_header = format!("Host: {host}");
    let mut args = vec!["-s", "-S", "-i", "--max-time", "30", "-H", &host_header];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run_tool("curl", &args, "install curl").await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_curl(&text).unwrap_or_else(|| panic!("curl {args:?}: unreadable output {text:?}"))
}

fn parse_curl(text: &str) -> Option<Curled> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Curled {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A Secret `ns/name` whose key `auth` holds the htpasswd `lines` (auth-file form).
fn auth_file_secret(ns: &str, name: &str, lines: &[String]) -> Value {
    let file = lines.join("\n") + "\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(file);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": ns },
        "type": "Opaque",
        "data": { "auth": b64 },
    })
}

/// A Secret `ns/name` with one key per user, the value its hash (auth-map form), from
/// htpasswd `lines`.
fn auth_map_secret(ns: &str, name: &str, lines: &[String]) -> Value {
    let data: serde_json::Map<String, Value> = lines
        .iter()
        .map(|l| {
            let (user, hash) = l.split_once(':').expect("user:hash");
            let b64 = base64::engine::general_purpose::STANDARD.encode(hash);
            (user.to_owned(), json!(b64))
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": ns },
        "type": "Opaque",
        "data": data,
    })
}

/// `auth-type: basic` with Secret `secret`, plus `more` annotations.
fn basic_auth<'a>(secret: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![(AUTH_TYPE, "basic"), (AUTH_SECRET, secret)];
    all.extend_from_slice(more);
    all
}

/// One request and what must come back: `200` from the backend, or a refusal (`401` with
/// `challenge` when given, `403`, `404`) that never reached it.
struct Expect<'a> {
    host: &'a str,
    user: Option<&'a str>,
    /// Extra curl arguments (a claimed client address).
    extra: &'a [&'a str],
    status: u16,
    challenge: Option<&'a str>,
}

fn expect<'a>(host: &'a str, user: Option<&'a str>, status: u16) -> Expect<'a> {
    Expect {
        host,
        user,
        extra: &[],
        status,
        challenge: None,
    }
}

/// Sends every case with curl, reports all wrong answers at once, and checks that exactly the
/// 200s reached the backend.
async fn check_curl(gw: &Wasmgress, rec: &Recorder, cases: &[Expect<'_>]) {
    let before = rec.arrived();
    let mut wrong = Vec::new();
    for c in cases {
        let r = curl(gw, c.host, c.user, c.extra).await;
        let reached = r.backend().is_some();
        let challenge_ok = c
            .challenge
            .is_none_or(|want| r.header("www-authenticate") == Some(want));
        if r.status != c.status || reached != (c.status == 200) || !challenge_ok {
            wrong.push(format!(
                "{} user={:?} {:?}: expected {} (challenge {:?}), got {}",
                c.host,
                c.user,
                c.extra,
                c.status,
                c.challenge,
                r.summary()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} curl requests answered wrongly:\n  {}",
        wrong.len(),
        cases.len(),
        wrong.join("\n  ")
    );
    let admitted = cases.iter().filter(|c| c.status == 200).count();
    assert_eq!(
        rec.arrived() - before,
        admitted,
        "only authenticated requests may reach the backend"
    );
}

// ---------------------------------------------------------------------------------------------
// Basic authentication

/// One htpasswd file with a bcrypt, an apr1 and a SHA-1 user (and passwords with a `:` and
/// non-ASCII letters) behind file.test, realm "Staff only"; an auth-map Secret behind map.test
/// (no realm: `Basic realm=""`, as ingress-nginx). Every case goes through the real curl.
#[tokio::test]
async fn basic_auth_with_real_htpasswd_files() {
    let file = vec![
        hashed("-B", "$2y$", "bea", "b-secret").await,
        hashed("-m", "$apr1$", "april", "a-secret").await,
        hashed("-s", "{SHA}", "shay", "s-secret").await,
        // Basic credentials split at the first `:`; the rest is the password.
        hashed("-m", "$apr1$", "colon", "pa:ss").await,
        hashed("-B", "$2y$", "zoe", "pässwörd").await,
    ];
    let map = vec![
        hashed("-B", "$2y$", "mapped", "m-secret").await,
        hashed("-m", "$apr1$", "mapped2", "m2-secret").await,
    ];
    let ca = TestCa::new();
    let staff = [(AUTH_REALM, "Staff only")];
    let (rec, m) = app_with(vec![
        auth_file_secret(NS, "users", &file),
        auth_map_secret(NS, "map-users", &map),
        ingress("file", "file.test", "app", &basic_auth("users", &staff)),
        ingress(
            "map",
            "map.test",
            "app",
            &basic_auth("default/map-users", &[(AUTH_SECRET_TYPE, "auth-map")]),
        ),
        ca.leaf(&["secure.test"]).secret("secure-tls", false),
        basic_auth("users", &[])
            .iter()
            .fold(Ingress::new("secure"), |ing, (k, v)| ing.annotation(k, v))
            .tls(&["secure.test"], "secure-tls")
            .rule(Some("secure.test"), &[prefix("/", "app")])
            .build(),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    let staff_challenge = Some(r#"Basic realm="Staff only""#);
    let refused = |host, user, challenge| Expect {
        challenge,
        ..expect(host, user, 401)
    };
    check_curl(
        &gw,
        &rec,
        &[
            expect("file.test", Some("bea:b-secret"), 200),
            expect("file.test", Some("april:a-secret"), 200),
            expect("file.test", Some("shay:s-secret"), 200),
            expect("file.test", Some("colon:pa:ss"), 200),
            expect("file.test", Some("zoe:pässwörd"), 200),
            refused("file.test", Some("bea:wrong"), staff_challenge),
            refused("file.test", Some("april:wrong"), staff_challenge),
            refused("file.test", Some("shay:wrong"), staff_challenge),
            refused("file.test", Some("colon:pa"), staff_challenge),
            refused("file.test", Some("zoe:passwort"), staff_challenge),
            refused("file.test", Some("mallory:b-secret"), staff_challenge),
            refused("file.test", None, staff_challenge),
            // A user of another Secret is nobody here.
            refused("file.test", Some("mapped:m-secret"), staff_challenge),
            expect("map.test", Some("mapped:m-secret"), 200),
            expect("map.test", Some("mapped2:m2-secret"), 200),
            refused("map.test", Some("mapped:wrong"), Some(r#"Basic realm="""#)),
            refused("map.test", Some("bea:b-secret"), None),
            refused("map.test", None, Some(r#"Basic realm="""#)),
        ],
    )
    .await;

    // Plain HTTP to a TLS host is redirected before any password is asked for, as nginx
    // redirects in its rewrite phase: a browser never sends the password in clear text.
    let r = curl(&gw, "secure.test", None, &[]).await;
    assert_eq!(r.status, 308, "{}", r.summary());
    assert_eq!(r.header("location"), Some("https://secure.test/"));
    assert_eq!(r.header("www-authenticate"), None, "{}", r.summary());
}

/// Authentication that cannot be checked is never served open: a missing Secret, or a hash
/// the host does not verify (crypt(3) DES, `htpasswd -d`), rejects the Ingress (404 with or
/// without credentials) and the binary names it; a neighbour keeps serving.
#[tokio::test]
async fn basic_auth_that_cannot_be_checked_rejects_its_ingress() {
    let des = htpasswd("-d", "dee", "d-secret").await;
    let (rec, m) = app_with(vec![
        auth_file_secret(NS, "des-users", &[des]),
        ingress(
            "missing",
            "missing.test",
            "app",
            &basic_auth("nobody-here", &[]),
        ),
        ingress("des", "des.test", "app", &basic_auth("des-users", &[])),
        ingress("open", "open.test", "app", &[]),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;
    check_curl(
        &gw,
        &rec,
        &[
            expect("missing.test", None, 404),
            expect("missing.test", Some("dee:d-secret"), 404),
            expect("des.test", None, 404),
            expect("des.test", Some("dee:d-secret"), 404),
            expect("open.test", None, 200),
        ],
    )
    .await;
    for name in ["missing", "des"] {
        assert!(
            gw.stderr_mentions(&format!("Ingress {NS}/{name}")).await,
            "no diagnostic on stderr names the rejected Ingress {name}"
        );
    }
}

/// The Service `app` in namespace `ns`, reaching the recording backend `rec`.
fn app_service_in(ns: &str, rec: &Recorder) -> Vec<Value> {
    let port = rec.addr.port();
    let target = Port::Number(port);
    let ports = [ServicePort {
        name: Some("http"),
        port: 80,
        target,
    }];
    vec![
        service(ns, "app", &ports),
        endpoint_slice(
            ns,
            "app",
            "app-slice",
            &[(Some("http"), port)],
            &[ready(&rec.addr.ip().to_string())],
        ),
    ]
}

/// `auth-secret: NAME` is read from the Ingress's own namespace. `auth-secret: other/users`
/// reads another namespace's Secret: refused (404) by default, as ingress-nginx without
/// `--allow-cross-namespace-resources`; with the flag it guards the route.
#[tokio::test]
async fn a_secret_in_another_namespace_needs_allow_cross_namespace_resources() {
    let bea = vec![hashed("-B", "$2y$", "bea", "b-secret").await];
    let tom = vec![hashed("-s", "{SHA}", "tom", "t-secret").await];
    let rec = Recorder::start("app").await;
    let mut objects = rec.objects();
    objects.extend(app_service_in("team", &rec));
    objects.extend([
        auth_file_secret("other", "users", &bea),
        auth_file_secret(NS, "users", &bea),
        auth_file_secret("team", "users", &tom),
        ingress(
            "cross",
            "cross.test",
            "app",
            &basic_auth("other/users", &[]),
        ),
        basic_auth("users", &[])
            .iter()
            .fold(Ingress::new("teamed").namespace("team"), |ing, (k, v)| {
                ing.annotation(k, v)
            })
            .rule(Some("team.test"), &[prefix("/", "app")])
            .build(),
    ]);
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let gw = Wasmgress::start(&m, &[]).await;
    check_curl(
        &gw,
        &rec,
        &[
            expect("cross.test", None, 404),
            expect("cross.test", Some("bea:b-secret"), 404),
            expect("team.test", Some("tom:t-secret"), 200),
            // default/users is not team's Secret.
            expect("team.test", Some("bea:b-secret"), 401),
        ],
    )
    .await;
    drop(gw);

    let gw = Wasmgress::start(&m, &["--allow-cross-namespace-resources"]).await;
    check_curl(
        &gw,
        &rec,
        &[
            expect("cross.test", None, 401),
            expect("cross.test", Some("bea:wrong"), 401),
            expect("cross.test", Some("bea:b-secret"), 200),
        ],
    )
    .await;
}

/// Rewriting the Secret's file changes the password in the running process: the new one
/// works and the old one, verified (and so remembered) just before, no longer does.
#[tokio::test]
async fn a_changed_secret_changes_the_password() {
    let old = vec![hashed("-B", "$2y$", "bea", "old-pass").await];
    let new = vec![hashed("-B", "$2y$", "bea", "new-pass").await];
    let (rec, m) = app_with(vec![ingress(
        "file",
        "file.test",
        "app",
        &basic_auth("users", &[]),
    )])
    .await;
    m.write("secret.yaml", &[auth_file_secret(NS, "users", &old)]);
    let gw = Wasmgress::start(&m, &[]).await;
    check_curl(
        &gw,
        &rec,
        &[
            expect("file.test", Some("bea:old-pass"), 200),
            expect("file.test", Some("bea:new-pass"), 401),
        ],
    )
    .await;

    m.write("secret.yaml", &[auth_file_secret(NS, "users", &new)]);
    let deadline = tokio::time::Instant::now() + RELOAD_LIMIT;
    loop {
        let r = curl(&gw, "file.test", Some("bea:new-pass"), &[]).await;
        if r.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new password still fails {RELOAD_LIMIT:?} after the Secret changed: {}",
            r.summary()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    check_curl(
        &gw,
        &rec,
        &[
            expect("file.test", Some("bea:old-pass"), 401),
            expect("file.test", Some("bea:new-pass"), 200),
        ],
    )
    .await;
}

/// `satisfy: any`: an address inside the allow list passes without credentials, one outside
/// needs them (401, not 403: it can still log in). `satisfy: all` (the default): inside still
/// needs credentials, outside is refused (403) even with them. The client address is a
/// trusted X-Forwarded-For.
#[tokio::test]
async fn satisfy_combines_the_allow_list_and_basic_auth() {
    let users = vec![hashed("-B", "$2y$", "bea", "b-secret").await];
    let guarded = |satisfy: Option<&'static str>| {
        let mut a = basic_auth("users", &[(ALLOW, "10.0.0.0/8")]);
        a.extend(satisfy.map(|s| (SATISFY, s)));
        a
    };
    let (rec, m) = app_with(vec![
        auth_file_secret(NS, "users", &users),
        ingress("any", "any.test", "app", &guarded(Some("any"))),
        ingress("all", "all.test", "app", &guarded(Some("all"))),
        ingress("default", "default.test", "app", &guarded(None)),
    ])
    .await;
    let gw = Wasmgress::start(&m, &TRUST_LOOPBACK).await;

    const INSIDE: &[&str] = &["-H", "X-Forwarded-For: 10.1.2.3"];
    const OUTSIDE: &[&str] = &["-H", "X-Forwarded-For: 203.0.113.9"];
    let at = |host, user, extra, status| Expect {
        extra,
        ..expect(host, user, status)
    };
    let mut cases = vec![
        at("any.test", None, INSIDE, 200),
        at("any.test", Some("bea:wrong"), INSIDE, 200),
        at("any.test", None, OUTSIDE, 401),
        at("any.test", Some("bea:wrong"), OUTSIDE, 401),
        at("any.test", Some("bea:b-secret"), OUTSIDE, 200),
    ];
    for host in ["all.test", "default.test"] {
        cases.extend([
            at(host, None, INSIDE, 401),
            at(host, Some("bea:wrong"), INSIDE, 401),
            at(host, Some("bea:b-secret"), INSIDE, 200),
            at(host, Some("bea:b-secret"), OUTSIDE, 403),
            at(host, None, OUTSIDE, 403),
        ]);
    }
    check_curl(&gw, &rec, &cases).await;
}

// ---------------------------------------------------------------------------------------------
// Body size

/// `POST http://host/upload` with a body of `bytes` bytes (declared in Content-Length).
async fn post(gw: &Wasmgress, host: &str, bytes: usize) -> Resp {
    let req = Req::get(host, "/upload")
        .method(Method::POST)
        .body(vec![b'b'; bytes]);
    gw.send(&req).await
}

/// With the controller-wide limit at 1k: `proxy-body-size: 2k` lets 1 KiB through and answers
/// 413 to 3 KiB before the backend sees it (declared or streamed); `0` lifts the limit; an
/// Ingress without the annotation keeps the controller's 1k; `big` rejects its Ingress.
#[tokio::test]
async fn proxy_body_size_per_ingress() {
    let (rec, m) = app_with(vec![
        ingress("small", "small.test", "app", &[(BODY_SIZE, "2k")]),
        ingress("unlimited", "unlimited.test", "app", &[(BODY_SIZE, "0")]),
        ingress("plain", "plain.test", "app", &[]),
        ingress("bad-size", "bad.test", "app", &[(BODY_SIZE, "big")]),
    ])
    .await;
    let gw = Wasmgress::start(&m, &["--proxy-body-size", "1k"]).await;

    let mut wrong = Vec::new();
    let cases = [
        ("small.test", 1024, 200),
        ("small.test", 2048, 200),
        ("small.test", 3 * 1024, 413),
        ("unlimited.test", 64 * 1024, 200),
        ("plain.test", 1024, 200),
        ("plain.test", 3 * 1024, 413),
        ("bad.test", 10, 404),
    ];
    for (host, bytes, want) in cases {
        let r = post(&gw, host, bytes).await;
        let echoed = r.echo().map(|e| e["body_bytes"].clone());
        let ok = if want == 200 {
            r.status == 200 && echoed == Some(json!(bytes))
        } else {
            r.status == want && echoed.is_none()
        };
        if !ok {
            wrong.push(format!(
                "POST {bytes} bytes to {host}: expected {want}, got {}",
                r.summary()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} body-size answers wrong:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );
    let passed = cases.iter().filter(|c| c.2 == 200).count();
    assert_eq!(
        rec.arrived(),
        passed,
        "a body declared too large must not reach the backend"
    );

    // Chunked, the size is only known while streaming: 3 KiB still gets 413.
    let mut chunked =
        b"POST /upload HTTP/1.1\r\nHost: small.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'c'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(gw.http, &chunked).await;
    assert_eq!(
        r.status,
        413,
        "3 KiB chunked to small.test: {}",
        r.summary()
    );

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = validate_error(&stdout, NS, "bad-size", BODY_SIZE);
    assert!(
        line.contains("big"),
        "the diagnostic quotes the value: {line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Plugin ABI 0.1.0

/// `legacy`, a component built against the frozen ABI 0.1.0, loaded with `--plugin-dir`: its
/// static request header and its request hook reach the backend, and its hook's 403 stops a
/// request before the backend. `set-header`, a 0.2.0 component in the same folder, still runs
/// on its own Ingress, and neither plugin touches the other's route.
#[tokio::test]
async fn a_plugin_built_for_abi_0_1_0_runs_beside_a_0_2_0_one() {
    let plugins = PluginDir::with(&["legacy", "set-header"]);
    let (rec, m) = app_with(vec![
        ingress("legacy", "legacy.test", "app", &[(PLUGINS, "legacy")]),
        ingress("modern", "modern.test", "app", &[(PLUGINS, "set-header")]),
    ])
    .await;
    let gw = Wasmgress::start(&m, &plugins.args()).await;

    let r = gw.get("legacy.test", "/path").await;
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.summary());
    assert_eq!(
        r.seen("x-legacy-static"),
        ["1"],
        "the 0.1.0 policy's header"
    );
    assert_eq!(r.seen("x-legacy-hook"), ["GET /path"], "the 0.1.0 hook ran");
    assert!(
        r.seen("x-seen-by").is_empty(),
        "set-header is not on legacy.test"
    );

    let r = gw
        .send(&Req::get("legacy.test", "/path").header("x-legacy-deny", "1"))
        .await;
    assert_eq!(
        r.status,
        403,
        "the 0.1.0 hook's own answer: {}",
        r.summary()
    );
    assert_eq!(r.text(), "legacy says no\n", "{}", r.summary());

    let r = gw.get("modern.test", "/").await;
    let seen = r.seen("x-seen-by");
    assert!(
        seen.len() == 1 && seen[0].starts_with("wasm-"),
        "set-header's hook ran on modern.test: {seen:?} ({})",
        r.summary()
    );
    assert!(
        r.seen("x-legacy-static").is_empty(),
        "legacy is not on modern.test"
    );
    assert!(
        r.seen("x-legacy-hook").is_empty(),
        "legacy is not on modern.test"
    );
    assert_eq!(
        rec.arrived(),
        2,
        "the 403 answered by legacy did not reach the backend"
    );
}

/// `auth-type: digest` over an htdigest Secret (`user:realm:HA1`), with the real `curl
/// --digest`: the right password reaches the backend (curl answers the challenge with the
/// nonce wasmgress issued), a wrong one or an unknown user gets 401 with a fresh `Digest`
/// challenge, and a Secret for another realm rejects the Ingress.
#[tokio::test]
async fn digest_auth_with_the_real_curl() {
    use md5::Digest as _;
    let ha1 = |user: &str, realm: &str, password: &str| -> String {
        let digest = md5::Md5::digest(format!("{user}:{realm}:{password}"));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    };
    let line = |user: &str, realm: &str, password: &str| {
        format!("{user}:{realm}:{}", ha1(user, realm, password))
    };
    let realm = [(AUTH_REALM, "Staff")];
    let digest = |secret: &'static str| {
        let mut a = vec![(AUTH_TYPE, "digest"), (AUTH_SECRET, secret)];
        a.extend_from_slice(&realm);
        a
    };
    let (rec, m) = app_with(vec![
        auth_file_secret(NS, "digest-users", &[line("dana", "Staff", "d-secret")]),
        auth_file_secret(NS, "other-realm", &[line("dana", "Elsewhere", "d-secret")]),
        ingress("digest", "digest.test", "app", &digest("digest-users")),
        ingress("wrong-realm", "wrong.test", "app", &digest("other-realm")),
    ])
    .await;
    let gw = Wasmgress::start(&m, &[]).await;

    // curl -i prints the challenge and then the answer to its digest: keep the last one.
    let last = |mut c: Curled| {
        while c.body.starts_with("HTTP/") {
            c = parse_curl(&c.body).expect("a second response");
        }
        c
    };
    let ok = last(curl(&gw, "digest.test", Some("dana:d-secret"), &["--digest"]).await);
    assert_eq!(ok.status, 200, "{}", ok.summary());
    assert_eq!(ok.backend().as_deref(), Some("app"));
    for user in ["dana:nope", "mallory:d-secret"] {
        let r = last(curl(&gw, "digest.test", Some(user), &["--digest"]).await);
        assert_eq!(r.status, 401, "{user}: {}", r.summary());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with(r#"Digest realm="Staff", nonce=""#),
            "{user}: {challenge}"
        );
    }
    let r = curl(&gw, "digest.test", None, &[]).await;
    assert_eq!(r.status, 401, "{}", r.summary());
    let r = last(curl(&gw, "wrong.test", Some("dana:d-secret"), &["--digest"]).await);
    assert_eq!(r.status, 404, "a Secret for another realm: {}", r.summary());
    assert_eq!(
        rec.arrived(),
        1,
        "only the right password reached the backend"
    );
}
