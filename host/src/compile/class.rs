//! Which Ingresses are ours, decided the way ingress-nginx users expect.
//!
//! An IngressClass is ours only when its `spec.controller` is ours: a class that merely has
//! our name but names another controller belongs to that controller, so another team's
//! IngressClass can never make us serve (or stop serving) Ingresses. A class name with no
//! IngressClass object at all is ours when it is `--ingress-class` (folder mode needs no class
//! objects).

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::source::Sourced;

pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Our identity: the class name we answer to and the controller name in IngressClass objects.
#[derive(Clone, Debug)]
pub struct Identity {
    pub class: String,
    pub controller: String,
}

impl Identity {
    fn owns_class(&self, class: &IngressClass) -> bool {
        controller(class) == Some(self.controller.as_str())
    }

    /// Whether the class called `name` is ours: by its IngressClass's controller when there is
    /// one, else by name.
    fn class_is_ours(&self, name: &str, classes: &[Sourced<IngressClass>]) -> Result<(), String> {
        let object = classes
            .iter()
            .find(|c| c.object.metadata.name.as_deref() == Some(name));
        match object {
            Some(c) if self.owns_class(&c.object) => Ok(()),
            Some(c) => Err(format!(
                "IngressClass {name:?} belongs to controller {:?}, not {:?}",
                controller(&c.object).unwrap_or(""),
                self.controller
            )),
            None if name == self.class => Ok(()),
            None => Err(format!("class {name:?} is not {:?}", self.class)),
        }
    }

    /// `Ok(())` when the Ingress is ours, else why not (for a diagnostic).
    pub fn claims(
        &self,
        ingress: &Ingress,
        classes: &[Sourced<IngressClass>],
    ) -> Result<(), Unclaimed> {
        self.decide(ingress, classes).map_err(|why| Unclaimed {
            namesake: why.contains(&format!("{:?} belongs to", self.class)),
            why,
        })
    }

    fn decide(&self, ingress: &Ingress, classes: &[Sourced<IngressClass>]) -> Result<(), String> {
        if let Some(name) = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
        {
            return self
                .class_is_ours(name, classes)
                .map_err(|why| format!("ingressClassName: {why}"));
        }
        let annotations = ingress.metadata.annotations.as_ref();
        if let Some(name) = annotations.and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)) {
            return self
                .class_is_ours(name, classes)
                .map_err(|why| format!("{LEGACY_CLASS_ANNOTATION}: {why}"));
        }
        let default_is_ours = classes.iter().any(|c| {
            let marked = c
                .object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
            marked && self.owns_class(&c.object)
        });
        if default_is_ours {
            Ok(())
        } else {
            Err("no ingress class, and no IngressClass of ours is marked default".into())
        }
    }
}

/// Why an Ingress is not ours.
#[derive(Debug)]
pub struct Unclaimed {
    pub why: String,
    /// It names a class called like ours that another controller owns: worth a warning, since
    /// someone may expect us to serve it.
    pub namesake: bool,
}

fn controller(class: &IngressClass) -> Option<&str> {
    class.spec.as_ref().and_then(|s| s.controller.as_deref())
}
