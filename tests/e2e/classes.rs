//! Which Ingresses are ours: `spec.ingressClassName` naming our class or an IngressClass whose
//! controller is `wasmgress.io/ingress-controller`, the legacy `kubernetes.io/ingress.class`
//! annotation, an IngressClass of ours marked default for Ingresses without class, and
//! `--ingress-class` choosing another class name. Others' Ingresses are never served, nor are
//! those of a class named like ours that another controller owns.

use crate::harness::backend::several;
use crate::harness::manifests::{CONTROLLER, ingress_class};
use crate::harness::{Ingress, Manifests, Wasmgress, prefix};

const LEGACY: &str = "kubernetes.io/ingress.class";

#[tokio::test]
async fn only_ingresses_of_our_class_are_served() {
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(ingress_class("custom-name", CONTROLLER, false));
    objects.push(ingress_class(
        "others",
        "example.com/another-controller",
        false,
    ));
    let on = |name: &str| {
        Ingress::new(name).rule(Some(&format!("{name}.class.test")), &[prefix("/", "app")])
    };
    objects.push(on("by-class-name").build());
    objects.push(on("by-our-ingressclass").class(Some("custom-name")).build());
    objects.push(
        on("by-annotation")
            .class(None)
            .annotation(LEGACY, "wasmgress")
            .build(),
    );
    objects.push(on("nginx-class-name").class(Some("nginx")).build());
    objects.push(
        on("nginx-annotation")
            .class(None)
            .annotation(LEGACY, "nginx")
            .build(),
    );
    objects.push(on("other-controller").class(Some("others")).build());
    objects.push(on("no-class").class(None).build());
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("by-class-name.class.test", "/", "app"),
        ("by-our-ingressclass.class.test", "/", "app"),
        ("by-annotation.class.test", "/", "app"),
        ("nginx-class-name.class.test", "/", "404"),
        ("nginx-annotation.class.test", "/", "404"),
        ("other-controller.class.test", "/", "404"),
        // No class and no default IngressClass: not ours.
        ("no-class.class.test", "/", "404"),
    ])
    .await;
}

#[tokio::test]
async fn ingress_without_class_is_ours_when_our_ingressclass_is_default() {
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(ingress_class("wasmgress", CONTROLLER, true));
    objects.push(
        Ingress::new("no-class")
            .class(None)
            .rule(Some("default.class.test"), &[prefix("/", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("someone-elses")
            .class(Some("nginx"))
            .rule(Some("nginx.class.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;

    gw.assert_routes(&[
        ("default.class.test", "/", "app"),
        ("nginx.class.test", "/", "404"),
    ])
    .await;
}

#[tokio::test]
async fn ingress_class_flag_picks_the_class_served() {
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(
        Ingress::new("edge")
            .class(Some("edge"))
            .rule(Some("edge.class.test"), &[prefix("/", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("edge-annotated")
            .class(None)
            .annotation(LEGACY, "edge")
            .rule(Some("edge-annotated.class.test"), &[prefix("/", "app")])
            .build(),
    );
    objects.push(
        Ingress::new("default-name")
            .rule(Some("wasmgress.class.test"), &[prefix("/", "app")])
            .build(),
    );
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &["--ingress-class", "edge"]).await;

    gw.assert_routes(&[
        ("edge.class.test", "/", "app"),
        ("edge-annotated.class.test", "/", "app"),
        ("wasmgress.class.test", "/", "404"),
    ])
    .await;
}

/// An IngressClass named like ours but whose `spec.controller` is another controller's is not
/// ours: its Ingresses (by name, by the legacy annotation, or by it being marked default) are
/// not served, and `validate` says whose class it is.
#[tokio::test]
async fn a_namesake_class_of_another_controller_is_not_ours() {
    let (_backends, mut objects) = several(&["app"]).await;
    objects.push(ingress_class("wasmgress", "k8s.io/ingress-nginx", true));
    let on = |name: &str| {
        Ingress::new(name).rule(Some(&format!("{name}.class.test")), &[prefix("/", "app")])
    };
    objects.push(on("by-name").class(Some("wasmgress")).build());
    objects.push(
        on("by-annotation")
            .class(None)
            .annotation(LEGACY, "wasmgress")
            .build(),
    );
    objects.push(on("no-class").class(None).build());
    let m = Manifests::new();
    m.write("all.yaml", &objects);
    let gw = Wasmgress::start(&m, &[]).await;
    gw.assert_routes(&[
        ("by-name.class.test", "/", "404"),
        ("by-annotation.class.test", "/", "404"),
        ("no-class.class.test", "/", "404"),
    ])
    .await;
    let (_, out, _) = crate::harness::process::validate(&m, &[]).await;
    assert!(
        out.lines().any(|l| l.starts_with("warning: ")
            && l.contains("default/by-name")
            && l.contains("k8s.io/ingress-nginx")),
        "{out}"
    );
}
