//! Service resolution: an Ingress backend (Service + port) to the ready addresses behind it.
//!
//! Follows Kubernetes: the Ingress names a Service port by number or name; EndpointSlices
//! (label `kubernetes.io/service-name`) carry ports named after the Service port, already
//! resolved to target port numbers; legacy Endpoints are used when a Service has no slices.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::IngressServiceBackend;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::route::Backend;
use crate::source::Snapshot;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Lookups over one snapshot's Services and endpoints, sharing one [`Backend`] per Service port
/// so every route to it shares the round-robin position.
pub struct Resolver<'a> {
    guard: Option<&'a EndpointGuard>,
    /// Round-robin positions, health and load kept across generations.
    upstreams: &'a crate::upstream::Upstreams,
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    endpoints: HashMap<(&'a str, &'a str), &'a Endpoints>,
    built: HashMap<String, (Arc<Backend>, Arc<[IpAddr]>)>,
}

/// A resolved backend and, when it has no ready endpoint, a note for the user.
pub struct Resolved {
    pub backend: Arc<Backend>,
    pub empty: bool,
    /// Endpoint addresses left out by the [`EndpointGuard`].
    pub refused: Arc<[IpAddr]>,
}

/// Which endpoint addresses may receive traffic. In a cluster, a tenant who writes an
/// EndpointSlice (or a Service without selector) by hand must not aim the proxy at the
/// proxy's own host: loopback, link-local (including the cloud metadata address
/// 169.254.169.254), unspecified addresses and the controller pod's own addresses are refused.
#[derive(Clone, Debug, Default)]
pub struct EndpointGuard {
    /// The controller pod's own addresses.
    pub own: Vec<IpAddr>,
}

impl EndpointGuard {
    /// Why `ip` is refused, if it is.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            return Some("loopback");
        }
        if ip.is_unspecified() {
            return Some("unspecified");
        }
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if link_local {
            return Some("link-local");
        }
        self.own.contains(&ip).then_some("the controller's own")
    }
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

impl<'a> Resolver<'a> {
    pub fn new(
        snapshot: &'a Snapshot,
        guard: Option<&'a EndpointGuard>,
        upstreams: &'a crate::upstream::Upstreams,
    ) -> Self {
        let services = snapshot
            .services
            .iter()
            .map(|s| (ns_name(&s.object.metadata), &s.object))
            .collect();
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for s in &snapshot.endpoint_slices {
            let meta = &s.object.metadata;
            let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
                continue;
            };
            let (ns, _) = ns_name(meta);
            slices
                .entry((ns, service.as_str()))
                .or_default()
                .push(&s.object);
        }
        let endpoints = snapshot
            .endpoints
            .iter()
            .map(|e| (ns_name(&e.object.metadata), &e.object))
            .collect();
        Self {
            guard,
            upstreams,
            services,
            slices,
            endpoints,
            built: HashMap::new(),
        }
    }

    /// Resolves a Service by name at its first port (`--default-backend-service`).
    pub fn resolve_service(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Resolved, (&'static str, String)> {
        let first = self
            .services
            .get(&(namespace, name))
            .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first())
            .map(|p| p.port);
        let backend = IngressServiceBackend {
            name: name.to_owned(),
            port: first.map(
                |number| k8s_openapi::api::networking::v1::ServiceBackendPort {
                    number: Some(number),
                    name: None,
                },
            ),
        };
        self.resolve(namespace, &backend)
    }

    /// The Service and port `backend` names in `namespace`; the error says what is missing.
    fn service_port(
        &self,
        namespace: &str,
        backend: &IngressServiceBackend,
    ) -> Result<(&'a Service, &'a ServicePort), (&'static str, String)> {
        let name = backend.name.as_str();
        let service = self
            .services
            .get(&(namespace, name))
            .ok_or_else(|| ("name", format!("Service {namespace}/{name} not found")))?;
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err((
                "name",
                format!(
                    "Service {namespace}/{name} is of type ExternalName, which is not supported yet"
                ),
            ));
        }
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
        let wanted = backend.port.as_ref();
        let port = match (
            wanted.and_then(|p| p.number),
            wanted.and_then(|p| p.name.as_deref()),
        ) {
            (Some(number), _) => ports.iter().find(|p| p.port == number).ok_or_else(|| {
                (
                    "port.number",
                    format!("Service {namespace}/{name} has no port {number}"),
                )
            })?,
            (None, Some(port_name)) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(port_name))
                .ok_or_else(|| {
                    (
                        "port.name",
                        format!("Service {namespace}/{name} has no port named {port_name:?}"),
                    )
                })?,
            (None, None) => return Err(("port", "a port number or name is required".into())),
        };

        Ok((service, port))
    }

    /// `backend`'s Service at its cluster IP and port (ingress-nginx `service-upstream`):
    /// one address, and kube-proxy (or a mesh) picks the pod.
    pub fn resolve_cluster_ip(
        &mut self,
        namespace: &str,
        backend: &IngressServiceBackend,
    ) -> Result<Resolved, (&'static str, String)> {
        let (service, port) = self.service_port(namespace, backend)?;
        let name = backend.name.as_str();
        let ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        let ip: IpAddr = match ip {
            Some(ip) if ip != "None" && !ip.is_empty() => ip.parse().map_err(|_| {
                (
                    "name",
                    format!(
                        "Service {namespace}/{name} has a cluster IP that is not an address: {ip:?}"
                    ),
                )
            })?,
            _ => {
                return Err((
                    "name",
                    format!(
                        "Service {namespace}/{name} has no cluster IP (headless, or not allocated yet): service-upstream needs one"
                    ),
                ));
            }
        };
        let key = format!("{namespace}/{name}:{} (cluster IP)", port.port);
        let port_number = u16::try_from(port.port)
            .map_err(|_| ("port", format!("port {} is out of range", port.port)))?;
        let addr = SocketAddr::new(ip, port_number);
        let refused: Arc<[IpAddr]> = match self.guard.and_then(|g| g.refuses(ip)) {
            Some(_) => Arc::from([ip]),
            None => Arc::from([]),
        };
        let addrs = if refused.is_empty() {
            vec![addr]
        } else {
            Vec::new()
        };
        let backend = Arc::new(
            Backend::new(key.as_str(), addrs)
                .with_h2c(declares_h2c(port))
                .with_memory(&self.upstreams.health, &self.upstreams.loads),
        );
        Ok(Resolved {
            empty: backend.endpoints().is_empty(),
            backend,
            refused,
        })
    }

    /// Resolves `backend` in `namespace`; the error says what is missing, for a diagnostic on
    /// the field the caller names.
    pub fn resolve(
        &mut self,
        namespace: &str,
        backend: &IngressServiceBackend,
    ) -> Result<Resolved, (&'static str, String)> {
        let (service, port) = self.service_port(namespace, backend)?;
        let name = backend.name.as_str();
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or(&[]);
        let key = format!("{namespace}/{name}:{}", port.port);
        if let Some((built, refused)) = self.built.get(&key) {
            return Ok(Resolved {
                backend: built.clone(),
                empty: built.endpoints().is_empty(),
                refused: refused.clone(),
            });
        }
        let single_port = ports.len() == 1;
        let addrs = match self.slices.get(&(namespace, name)) {
            Some(slices) => slice_addresses(slices, port, single_port),
            None => self
                .endpoints
                .get(&(namespace, name))
                .map(|e| legacy_addresses(e, port, single_port))
                .unwrap_or_default(),
        };
        let h2c = declares_h2c(port);
        let (addrs, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = match self.guard {
            Some(guard) => addrs
                .into_iter()
                .partition(|a| guard.refuses(a.ip()).is_none()),
            None => (addrs, Vec::new()),
        };
        let refused: Arc<[IpAddr]> = refused.iter().map(SocketAddr::ip).collect();
        let backend = Backend::new(key.as_str(), addrs)
            .with_h2c(h2c)
            .with_rotation(self.upstreams.rotations.get(&key))
            .with_memory(&self.upstreams.health, &self.upstreams.loads);
        let backend = Arc::new(backend);
        self.built.insert(key, (backend.clone(), refused.clone()));
        Ok(Resolved {
            empty: backend.endpoints().is_empty(),
            backend,
            refused,
        })
    }
}

/// The Service port declares `appProtocol` `kubernetes.io/h2c` or `grpc`.
fn declares_h2c(port: &ServicePort) -> bool {
    port.app_protocol.as_deref().is_some_and(|p| {
        p.eq_ignore_ascii_case("kubernetes.io/h2c") || p.eq_ignore_ascii_case("grpc")
    })
}

/// Whether an endpoint port (`name`, `number`) serves the Service port: same name, as
/// Kubernetes names them; or, for hand-written manifests, the numeric targetPort, or the only
/// port on both sides.
fn port_matches(sp: &ServicePort, name: Option<&str>, number: i32, only_port: bool) -> bool {
    let sp_name = sp.name.as_deref().unwrap_or("");
    if sp_name == name.unwrap_or("") {
        return true;
    }
    let target = match &sp.target_port {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(_)) => return only_port,
        None => sp.port,
    };
    target == number || only_port
}

fn slice_addresses(slices: &[&EndpointSlice], sp: &ServicePort, single: bool) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or(&[]);
        let only = single && ports.len() == 1;
        let Some(port) = ports.iter().find_map(|p| {
            let number = p.port?;
            port_matches(sp, p.name.as_deref(), number, only).then_some(number)
        }) else {
            continue;
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // A missing `ready` means unknown, which consumers must treat as ready; a
            // terminating pod takes no new requests whatever `ready` says.
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            out.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

fn legacy_addresses(endpoints: &Endpoints, sp: &ServicePort, single: bool) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.as_deref().unwrap_or(&[]) {
        let ports = subset.ports.as_deref().unwrap_or(&[]);
        let only = single && ports.len() == 1;
        let Some(port) = ports
            .iter()
            .find(|p| port_matches(sp, p.name.as_deref(), p.port, only))
            .and_then(|p| u16::try_from(p.port).ok())
        else {
            continue;
        };
        out.extend(
            subset
                .addresses
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .filter_map(|a| a.ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, port)),
        );
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn the_proxys_own_host_is_refused_and_pods_are_not() {
        let guard = EndpointGuard {
            own: vec!["10.1.0.5".parse().expect("ip")],
        };
        let refused = |ip: &str| guard.refuses(ip.parse().expect("ip"));
        assert_eq!(refused("127.0.0.1"), Some("loopback"));
        assert_eq!(refused("127.9.9.9"), Some("loopback"));
        assert_eq!(refused("::1"), Some("loopback"));
        assert_eq!(refused("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(refused("0.0.0.0"), Some("unspecified"));
        assert_eq!(refused("::"), Some("unspecified"));
        assert_eq!(refused("169.254.169.254"), Some("link-local"));
        assert_eq!(refused("fe80::1"), Some("link-local"));
        assert_eq!(refused("febf::1"), Some("link-local"));
        assert_eq!(refused("10.1.0.5"), Some("the controller's own"));
        for pod in [
            "10.1.0.6",
            "192.168.3.4",
            "fd00::1",
            "fec0::1",
            "2001:db8::1",
        ] {
            assert_eq!(refused(pod), None, "{pod}");
        }
    }
}
