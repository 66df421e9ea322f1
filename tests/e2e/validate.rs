//! `wasmgress validate DIR`: one line per diagnostic on stdout, `error: FILE: Ingress NS/NAME:
//! FIELD: why`, naming the file and the field of each rejected Ingress, exit 1 when any Ingress
//! was rejected and 0 for a good folder; only Ingresses of the chosen class are judged.

use crate::harness::backend::several;
use crate::harness::process::validate;
use crate::harness::{Ingress, Manifests, Port, prefix};

/// The stdout lines about Ingress `name`, or a panic showing all of stdout.
fn lines_for<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!("Ingress default/{name}:");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(&needle)).collect();
    assert!(
        !lines.is_empty(),
        "no diagnostic line names {needle:?}; stdout was:\n{stdout}"
    );
    lines
}

/// The `error:` line about Ingress `name` naming `field` (after `Ingress NS/NAME: `) and saying
/// why after it, or a panic showing that Ingress's lines.
fn error_line_with_field<'a>(stdout: &'a str, name: &str, field: &str) -> &'a str {
    let prefix = format!("Ingress default/{name}:");
    let lines = lines_for(stdout, name);
    lines
        .iter()
        .copied()
        .find(|line| {
            let Some(at) = line.find(&prefix) else {
                return false;
            };
            let after = line[at + prefix.len()..].trim_start();
            let why = after
                .strip_prefix(field)
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, why)| why.trim())
                .unwrap_or_default();
            line.starts_with("error: ") && !why.is_empty()
        })
        .unwrap_or_else(|| {
            panic!(
                "no `error: FILE: {prefix} {field}...: why` line; lines about {name}:\n{}",
                lines.join("\n")
            )
        })
}

#[tokio::test]
async fn a_folder_with_broken_ingresses_names_file_and_field_and_exits_1() {
    let (_backends, mut objects) = several(&["good"]).await;
    objects.push(
        Ingress::new("good-app")
            .rule(Some("good.example.com"), &[prefix("/", "good")])
            .build(),
    );
    let m = Manifests::new();
    m.write("good.yaml", &objects);
    let on = |name: &str| Ingress::new(name);
    let broken = [
        (
            "broken/service.yaml",
            on("broken-svc").rule(Some("a.test"), &[prefix("/", "no-such-service")]),
            "spec.rules[0].http.paths[0].backend.service.name",
        ),
        (
            "broken/port.yaml",
            on("broken-port").rule(Some("b.test"), &[prefix("/", "good").port(81)]),
            "spec.rules[0].http.paths[0].backend.service.port",
        ),
        (
            "broken/path.yaml",
            on("broken-path")
                .rule(Some("c.test"), &[prefix("/ok", "good")])
                .rule(
                    Some("d.test"),
                    &[prefix("/ok", "good"), prefix("foo", "good")],
                ),
            "spec.rules[1].http.paths[1].path",
        ),
        (
            "broken/secret.yml",
            on("broken-secret")
                .tls(&["e.test"], "no-such-secret")
                .rule(Some("e.test"), &[prefix("/", "good")]),
            "spec.tls[0].secretName",
        ),
        (
            "broken/default.yaml",
            on("broken-default").default_backend("no-such-service", Port::Number(80)),
            "spec.defaultBackend.service.name",
        ),
    ];
    for (file, ing, _) in &broken {
        m.write(file, &[ing.clone().build()]);
    }

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 1,
        "exit code with rejected Ingresses; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for (file, ing, field) in &broken {
        let name = ing.clone().build()["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let line = error_line_with_field(&stdout, &name, field);
        assert!(
            line.contains(file),
            "diagnostic for {name} should name its file {file}: {line:?}"
        );
    }
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("error:") && l.contains("good-app")),
        "the good Ingress must not be reported as an error:\n{stdout}"
    );
}

#[tokio::test]
async fn a_good_folder_exits_0_without_errors() {
    let (_backends, mut objects) = several(&["good"]).await;
    objects.push(
        Ingress::new("good-app")
            .rule(Some("good.example.com"), &[prefix("/", "good")])
            .default_backend("good", Port::Name("http"))
            .build(),
    );
    let m = Manifests::new();
    m.write("good.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 0,
        "exit code for a good folder; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("error:")),
        "a good folder printed errors:\n{stdout}"
    );
}

/// A broken Ingress of another class is not ours to judge, unless `--ingress-class` names it.
#[tokio::test]
async fn only_ingresses_of_the_chosen_class_are_judged() {
    let (_backends, mut objects) = several(&["good"]).await;
    objects.push(
        Ingress::new("good-app")
            .rule(Some("good.example.com"), &[prefix("/", "good")])
            .build(),
    );
    objects.push(
        Ingress::new("theirs")
            .class(Some("other"))
            .rule(
                Some("theirs.example.com"),
                &[prefix("/", "no-such-service")],
            )
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);

    let (code, stdout, stderr) = validate(&m, &[]).await;
    assert_eq!(
        code, 0,
        "another class's broken Ingress rejected ours; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("error:")),
        "another class's Ingress was reported:\n{stdout}"
    );

    let (code, stdout, stderr) = validate(&m, &["--ingress-class", "other"]).await;
    assert_eq!(
        code, 1,
        "with --ingress-class other; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    error_line_with_field(
        &stdout,
        "theirs",
        "spec.rules[0].http.paths[0].backend.service.name",
    );
}

/// Every annotation ingress-nginx documents that wasmgress refuses (an access restriction, a
/// canary, TLS passthrough...: anything whose absence would change who gets which traffic)
/// rejects its Ingress: `validate` exits 1 and names each annotation with the reason, and the
/// ignored ones are warnings with theirs.
#[tokio::test]
async fn refused_annotations_fail_validate_naming_the_annotation_and_the_reason() {
    use wasmgress::compat::{Fate, all};
    let (_backends, mut objects) = several(&["app"]).await;
    let judged: Vec<_> = all()
        .iter()
        .filter(|(_, e)| e.fate != Fate::Owned)
        .enumerate()
        .collect();
    for (i, (key, _)) in &judged {
        objects.push(
            Ingress::new(&format!("ing-{i}"))
                .annotation(&format!("nginx.ingress.kubernetes.io/{key}"), "on")
                .rule(Some(&format!("h{i}.example.com")), &[prefix("/", "app")])
                .build(),
        );
    }
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let (code, out, _) = validate(&m, &[]).await;
    assert_eq!(code, 1, "{out}");
    for (i, (key, entry)) in &judged {
        let (severity, fate) = match entry.fate {
            Fate::Refused => ("error: ", "refused: "),
            _ => ("warning: ", "ignored: "),
        };
        let field = format!("metadata.annotations[nginx.ingress.kubernetes.io/{key}]");
        let said = lines_for(&out, &format!("ing-{i}")).into_iter().any(|l| {
            l.starts_with(severity)
                && l.contains(&field)
                && l.contains(&format!("{fate}{}", entry.reason))
        });
        assert!(said, "{key}: no {severity}line with its reason:\n{out}");
    }
}

/// Before a migration, `validate` says which plugin will enforce each annotation it owns:
/// the access-control annotations ingress-nginx users carry show up as owned, not refused.
#[tokio::test]
async fn owned_annotations_are_listed_with_their_plugin() {
    let (_backends, mut objects) = several(&["web"]).await;
    let nginx = |key: &str| format!("nginx.ingress.kubernetes.io/{key}");
    objects.push(
        Ingress::new("web")
            .annotation(&nginx("whitelist-source-range"), "10.0.0.0/8")
            .annotation(&nginx("enable-cors"), "true")
            .annotation(&nginx("limit-rps"), "5")
            .annotation(&nginx("auth-url"), "http://auth.example.com/check")
            .rule(Some("web.example.com"), &[prefix("/", "web")])
            .build(),
    );
    let m = Manifests::new();
    m.write("web.yaml", &objects);
    let (code, stdout, _) = validate(&m, &[]).await;
    for (key, plugin) in [
        ("whitelist-source-range", "ip-access"),
        ("enable-cors", "cors"),
        ("limit-rps", "rate-limit"),
        ("auth-url", "external-auth"),
    ] {
        let line = format!(
            "owned: Ingress default/web: {}: plugin {plugin}",
            nginx(key)
        );
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(code, 0, "nothing is rejected:\n{stdout}");
}
