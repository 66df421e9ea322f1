//! Routing by host and path, as the Kubernetes Ingress spec defines it: every row of the
//! path-matching table (Exact vs Prefix, trailing slashes, element boundaries, longest match,
//! root prefix, Exact and Prefix on the same path, case sensitivity, ImplementationSpecific),
//! wildcard hosts matching exactly one label, rules without host, default backends scoped to
//! their Ingress's hosts (an Ingress without rules is the catch-all, `--default-backend-service`
//! the controller's), several Ingresses sharing a host, and conflicting identical paths (oldest
//! Ingress wins).

use crate::harness::backend::several;
use crate::harness::process::validate;
use crate::harness::{
    Backend, Ingress, Manifests, Port, Req, Wasmgress, exact, implementation_specific, prefix,
};

/// The table from the Kubernetes Ingress documentation ("Examples" under path types), one host
/// per row group so every row is checked against exactly the paths it names. Requests that
/// match nothing go to the `fallback` default backend, as the table says.
#[tokio::test]
async fn path_matching_table() {
    let (_backends, mut objects) = several(&["one", "two", "three", "fallback"]).await;
    let rules: Vec<(&str, Vec<_>)> = vec![
        ("root.paths.test", vec![prefix("/", "one")]),
        ("exact-foo.paths.test", vec![exact("/foo", "one")]),
        ("exact-foo-slash.paths.test", vec![exact("/foo/", "one")]),
        ("prefix-foo.paths.test", vec![prefix("/foo", "one")]),
        ("prefix-foo-slash.paths.test", vec![prefix("/foo/", "one")]),
        ("aaa-bb.paths.test", vec![prefix("/aaa/bb", "one")]),
        ("aaa-bbb.paths.test", vec![prefix("/aaa/bbb", "one")]),
        ("aaa-bbb-slash.paths.test", vec![prefix("/aaa/bbb/", "one")]),
        (
            "two-prefixes.paths.test",
            vec![prefix("/", "one"), prefix("/aaa", "two")],
        ),
        (
            // Declared shortest-last on purpose: the longest match wins, not the first.
            "three-prefixes.paths.test",
            vec![
                prefix("/aaa/bbb", "three"),
                prefix("/", "one"),
                prefix("/aaa", "two"),
            ],
        ),
        ("only-aaa.paths.test", vec![prefix("/aaa", "one")]),
        (
            "mixed.paths.test",
            vec![prefix("/foo", "one"), exact("/foo", "two")],
        ),
        (
            "case.paths.test",
            vec![prefix("/Foo", "one"), exact("/CaseExact", "two")],
        ),
        (
            "implspec.paths.test",
            vec![
                implementation_specific("/imp", "one"),
                prefix("/imp/deeper", "two"),
            ],
        ),
    ];
    let mut ing = Ingress::new("paths");
    for (host, paths) in &rules {
        ing = ing.rule(Some(host), paths);
    }
    objects.push(ing.build());
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    // The controller's default backend takes what no path matches, on these hosts too.
    let gw = Wasmgress::start(&m, &["--default-backend-service", "default/fallback"]).await;

    gw.assert_routes(&[
        // Prefix / matches all paths.
        ("root.paths.test", "/", "one"),
        ("root.paths.test", "/any/thing/deep", "one"),
        // Exact /foo: /foo yes; /bar, /foo/ no. The query string plays no part.
        ("exact-foo.paths.test", "/foo", "one"),
        ("exact-foo.paths.test", "/foo?x=1", "one"),
        ("exact-foo.paths.test", "/bar", "fallback"),
        ("exact-foo.paths.test", "/foo/", "fallback"),
        ("exact-foo.paths.test", "/foo/bar", "fallback"),
        ("exact-foo.paths.test", "/fo", "fallback"),
        // Exact /foo/: /foo no, /foo/ yes.
        ("exact-foo-slash.paths.test", "/foo", "fallback"),
        ("exact-foo-slash.paths.test", "/foo/", "one"),
        // Prefix /foo: /foo and /foo/ yes, and sub-paths; /foobar is not a path element match.
        ("prefix-foo.paths.test", "/foo", "one"),
        ("prefix-foo.paths.test", "/foo/", "one"),
        ("prefix-foo.paths.test", "/foo/bar", "one"),
        ("prefix-foo.paths.test", "/foobar", "fallback"),
        ("prefix-foo.paths.test", "/", "fallback"),
        // Prefix /foo/: same as /foo.
        ("prefix-foo-slash.paths.test", "/foo", "one"),
        ("prefix-foo-slash.paths.test", "/foo/", "one"),
        ("prefix-foo-slash.paths.test", "/foo/bar", "one"),
        ("prefix-foo-slash.paths.test", "/foobar", "fallback"),
        // Prefix /aaa/bb does not match /aaa/bbb.
        ("aaa-bb.paths.test", "/aaa/bbb", "fallback"),
        ("aaa-bb.paths.test", "/aaa/bb", "one"),
        ("aaa-bb.paths.test", "/aaa/bb/c", "one"),
        // Prefix /aaa/bbb: itself, trailing slash, sub-path yes; string prefix /aaa/bbbxyz no.
        ("aaa-bbb.paths.test", "/aaa/bbb", "one"),
        ("aaa-bbb.paths.test", "/aaa/bbb/", "one"),
        ("aaa-bbb.paths.test", "/aaa/bbb/ccc", "one"),
        ("aaa-bbb.paths.test", "/aaa/bbbxyz", "fallback"),
        // Prefix /aaa/bbb/ ignores its trailing slash.
        ("aaa-bbb-slash.paths.test", "/aaa/bbb", "one"),
        ("aaa-bbb-slash.paths.test", "/aaa/bbb/", "one"),
        ("aaa-bbb-slash.paths.test", "/aaa/bbb/ccc", "one"),
        // Prefixes /, /aaa: /aaa/ccc takes /aaa; /ccc takes /.
        ("two-prefixes.paths.test", "/aaa/ccc", "two"),
        ("two-prefixes.paths.test", "/aaa", "two"),
        ("two-prefixes.paths.test", "/ccc", "one"),
        ("two-prefixes.paths.test", "/aaaa", "one"),
        // Prefixes /, /aaa, /aaa/bbb: the longest matching prefix wins.
        ("three-prefixes.paths.test", "/aaa/bbb", "three"),
        ("three-prefixes.paths.test", "/aaa/bbb/ccc", "three"),
        ("three-prefixes.paths.test", "/aaa/bb", "two"),
        ("three-prefixes.paths.test", "/aaa", "two"),
        ("three-prefixes.paths.test", "/ccc", "one"),
        // Prefix /aaa, request /ccc: no match, default backend.
        ("only-aaa.paths.test", "/ccc", "fallback"),
        // Prefix /foo and Exact /foo: Exact wins for /foo, Prefix serves the rest.
        ("mixed.paths.test", "/foo", "two"),
        ("mixed.paths.test", "/foo/", "one"),
        ("mixed.paths.test", "/foo/bar", "one"),
        // Paths are case-sensitive.
        ("case.paths.test", "/Foo", "one"),
        ("case.paths.test", "/Foo/bar", "one"),
        ("case.paths.test", "/foo", "fallback"),
        ("case.paths.test", "/FOO", "fallback"),
        ("case.paths.test", "/CaseExact", "two"),
        ("case.paths.test", "/caseexact", "fallback"),
        // ImplementationSpecific behaves as Prefix (element-wise, longest match).
        ("implspec.paths.test", "/imp", "one"),
        ("implspec.paths.test", "/imp/", "one"),
        ("implspec.paths.test", "/imp/x", "one"),
        ("implspec.paths.test", "/impx", "fallback"),
        ("implspec.paths.test", "/imp/deeper/x", "two"),
    ])
    .await;
}

/// `*.example.com` matches exactly one label; an exact host beats the wildcard; hosts the
/// wildcard does not match fall to the rules without host.
#[tokio::test]
async fn wildcard_hosts_match_exactly_one_label() {
    let (_backends, mut objects) = several(&["wild", "exact", "anyhost"]).await;
    objects.push(
        Ingress::new("hosts")
            .rule(Some("*.example.com"), &[prefix("/", "wild")])
            .rule(Some("exact.example.com"), &[prefix("/", "exact")])
            .rule(None, &[prefix("/", "anyhost")])
            .build(),
    );
    let m = Manifests::new();
    m.write("hosts.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("a.example.com", "/", "wild"),
        ("zz-top.example.com", "/x/y", "wild"),
        ("exact.example.com", "/", "exact"),
        ("a.b.example.com", "/", "anyhost"),
        ("example.com", "/", "anyhost"),
        ("a.example.org", "/", "anyhost"),
    ])
    .await;
}

/// Rules without host serve every host that has no rules of its own; a host with rules of its
/// own does not fall back to them when none of its paths match.
#[tokio::test]
async fn rules_without_host_serve_other_hosts() {
    let (_backends, mut objects) = several(&["anyhost", "own"]).await;
    objects.push(
        Ingress::new("hostless")
            .rule(None, &[prefix("/", "anyhost")])
            .build(),
    );
    objects.push(
        Ingress::new("own-host")
            .rule(Some("own.example.com"), &[prefix("/foo", "own")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("other.example.com", "/anything", "anyhost"),
        ("127.0.0.1", "/", "anyhost"),
        ("own.example.com", "/foo/bar", "own"),
        ("own.example.com", "/bar", "404"),
    ])
    .await;
}

/// `spec.defaultBackend` answers what no rule matches: unmatched paths on a known host and
/// unknown hosts alike.
#[tokio::test]
async fn default_backends_answer_only_for_their_own_hosts() {
    let (_backends, mut objects) = several(&["app", "fallback", "other"]).await;
    objects.push(
        Ingress::new("with-default")
            .rule(Some("app.example.com"), &[prefix("/app", "app")])
            .default_backend("fallback", Port::Name("http"))
            .build(),
    );
    objects.push(
        Ingress::new("other-team")
            .rule(Some("b.example.com"), &[prefix("/b", "other")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("app.example.com", "/app/x", "app"),
        ("app.example.com", "/other", "fallback"),
    ])
    .await;
    // Another team's host, and hosts nobody names, are not captured by it.
    for (host, path) in [
        ("b.example.com", "/elsewhere"),
        ("unknown.example.com", "/"),
    ] {
        let r = gw.get(host, path).await;
        assert_eq!(r.status, 404, "GET http://{host}{path}: {}", r.summary());
        assert_eq!(r.backend(), None, "GET http://{host}{path}");
    }
}

/// An Ingress without rules is the catch-all for hosts nobody names; of two, the oldest wins
/// and the other is told. Named hosts' unmatched paths still do not reach it.
#[tokio::test]
async fn an_ingress_without_rules_is_the_catch_all() {
    let (_backends, mut objects) = several(&["app", "older", "newer"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.example.com"), &[prefix("/app", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("catch-all-newer")
            .created("2025-06-01T00:00:00Z")
            .default_backend("newer", Port::Name("http"))
            .build(),
    );
    objects.push(
        Ingress::new("catch-all-older")
            .created("2024-06-01T00:00:00Z")
            .default_backend("older", Port::Name("http"))
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;
    gw.assert_routes(&[
        ("unknown.example.com", "/", "older"),
        ("app.example.com", "/app", "app"),
    ])
    .await;
    let r = gw.get("app.example.com", "/elsewhere").await;
    assert_eq!(r.status, 404, "{}", r.summary());

    let (_, out, _) = validate(&m, &[]).await;
    assert!(
        out.lines().any(|l| l.contains("catch-all-newer")
            && l.contains("spec.defaultBackend")
            && l.contains("catch-all-older")),
        "the losing catch-all is told which one wins:\n{out}"
    );
}

/// `--default-backend-service` answers what no Ingress takes: unknown hosts and unmatched
/// paths of named hosts without a default backend of their own.
#[tokio::test]
async fn the_controller_default_backend_takes_the_rest() {
    let (_backends, mut objects) = several(&["app", "fallback", "own"]).await;
    objects.push(
        Ingress::new("app")
            .rule(Some("app.example.com"), &[prefix("/app", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("own-default")
            .rule(Some("own.example.com"), &[prefix("/x", "app")])
            .default_backend("own", Port::Name("http"))
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--default-backend-service", "default/fallback"]).await;
    gw.assert_routes(&[
        ("unknown.example.com", "/", "fallback"),
        ("app.example.com", "/elsewhere", "fallback"),
        ("own.example.com", "/elsewhere", "own"),
        ("app.example.com", "/app", "app"),
    ])
    .await;
}

/// Several Ingresses may add paths to the same host; each keeps its own paths.
#[tokio::test]
async fn ingresses_sharing_a_host_merge_their_paths() {
    let (_backends, mut objects) = several(&["api", "web"]).await;
    objects.push(
        Ingress::new("api")
            .rule(Some("shop.example.com"), &[prefix("/api", "api")])
            .build(),
    );
    objects.push(
        Ingress::new("web")
            .rule(Some("shop.example.com"), &[prefix("/", "web")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("shop.example.com", "/api/items", "api"),
        ("shop.example.com", "/", "web"),
        ("shop.example.com", "/apidocs", "web"),
    ])
    .await;
}

/// The same host + path + pathType in two Ingresses: the oldest creationTimestamp wins, then
/// namespace/name order. Names are chosen so that sorting by name alone would pick the other.
#[tokio::test]
async fn identical_paths_go_to_the_oldest_ingress() {
    let older = Backend::start("older").await;
    let newer = Backend::start("newer").await;
    let first = Backend::start("first-by-name").await;
    let second = Backend::start("second-by-name").await;
    let alpha = Backend::start("alpha-namespace").await;
    let beta = Backend::start("beta-namespace").await;
    let mut objects = Vec::new();
    for b in [&older, &newer, &first, &second] {
        objects.extend(b.objects());
    }
    objects.extend(alpha.objects_in("alpha", "svc"));
    objects.extend(beta.objects_in("beta", "svc"));

    let same = |name: &str, host: &str, service: &str, created: &str| {
        Ingress::new(name)
            .created(created)
            .rule(Some(host), &[prefix("/", service)])
    };
    objects.push(
        same(
            "aa-newer",
            "age.example.com",
            "newer",
            "2021-06-01T00:00:00Z",
        )
        .build(),
    );
    objects.push(
        same(
            "zz-older",
            "age.example.com",
            "older",
            "2020-06-01T00:00:00Z",
        )
        .build(),
    );
    objects.push(
        same(
            "bb",
            "name.example.com",
            "second-by-name",
            "2020-01-01T00:00:00Z",
        )
        .build(),
    );
    objects.push(
        same(
            "aa",
            "name.example.com",
            "first-by-name",
            "2020-01-01T00:00:00Z",
        )
        .build(),
    );
    objects.push(
        same("aa", "ns.example.com", "svc", "2020-01-01T00:00:00Z")
            .namespace("beta")
            .build(),
    );
    objects.push(
        same("zz", "ns.example.com", "svc", "2020-01-01T00:00:00Z")
            .namespace("alpha")
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("age.example.com", "/", "older"),
        ("name.example.com", "/", "first-by-name"),
        ("ns.example.com", "/", "alpha-namespace"),
    ])
    .await;
}

/// A `Host` header (or `:authority`) carrying a port still matches the host's rules: that is
/// what every client sends to a non-default port.
#[tokio::test]
async fn host_with_port_matches_the_host() {
    let (_backends, mut objects) = several(&["named", "wild"]).await;
    objects.push(
        Ingress::new("hosts")
            .rule(Some("named.example.com"), &[prefix("/", "named")])
            .rule(Some("*.wild.example.com"), &[prefix("/", "wild")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("named.example.com:8080", "/", "named"),
        ("x.wild.example.com:8080", "/", "wild"),
    ])
    .await;
    let mut h2 = gw.h2c().await;
    let r = h2
        .send(&Req::get("named.example.com:8080", "/"))
        .await
        .expect("h2c request with a port in :authority");
    assert_eq!(
        r.backend().as_deref(),
        Some("named"),
        "h2c request for named.example.com:8080: {}",
        r.summary()
    );
}

/// `use-regex` paths are tried longest pattern first, as ingress-nginx orders its regex
/// locations, whatever order the Ingress lists them in; and a host with hundreds of paths still
/// picks the longest matching prefix.
#[tokio::test]
async fn regex_paths_longest_first_and_hosts_with_many_paths() {
    let (_backends, mut objects) = several(&["api", "v2", "many", "deep"]).await;
    objects.push(
        Ingress::new("regex")
            .annotation("nginx.ingress.kubernetes.io/use-regex", "true")
            .rule(
                Some("regex.test"),
                &[
                    implementation_specific("/api", "api"),
                    implementation_specific("/api/v2/.*", "v2"),
                ],
            )
            .build(),
    );
    let mut paths: Vec<_> = (0..300)
        .map(|i| prefix(&format!("/svc{i}"), "many"))
        .collect();
    paths.push(prefix("/svc150/deep", "deep"));
    objects.push(Ingress::new("many").rule(Some("many.test"), &paths).build());
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("regex.test", "/api/v2/users", "v2"),
        ("regex.test", "/API/V2/users", "v2"),
        ("regex.test", "/api/v1/users", "api"),
        ("many.test", "/svc299/x", "many"),
        ("many.test", "/svc150/deep/x", "deep"),
        ("many.test", "/svc150/deeper", "many"),
    ])
    .await;
    let r = gw.get("many.test", "/svc300").await;
    assert_eq!(r.status, 404, "no prefix matches /svc300: {}", r.summary());
}
