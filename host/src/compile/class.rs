//! Which Ingresses are ours, decided the way ingress-nginx users expect.

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
        class.metadata.name.as_deref() == Some(self.class.as_str())
            || class.spec.as_ref().and_then(|s| s.controller.as_deref())
                == Some(self.controller.as_str())
    }

    /// `Ok(())` when the Ingress is ours, else why not (for a debug diagnostic).
    pub fn claims(
        &self,
        ingress: &Ingress,
        classes: &[Sourced<IngressClass>],
    ) -> Result<(), String> {
        if let Some(name) = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
        {
            let ours = name == self.class
                || classes.iter().any(|c| {
                    c.object.metadata.name.as_deref() == Some(name) && self.owns_class(&c.object)
                });
            return if ours {
                Ok(())
            } else {
                Err(format!("ingressClassName {name:?} is not {:?}", self.class))
            };
        }
        let annotations = ingress.metadata.annotations.as_ref();
        if let Some(name) = annotations.and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)) {
            return if *name == self.class {
                Ok(())
            } else {
                Err(format!(
                    "{LEGACY_CLASS_ANNOTATION} {name:?} is not {:?}",
                    self.class
                ))
            };
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
