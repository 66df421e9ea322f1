//! The README's quickstart as a user runs it: `wasmgress demo` serving the checked-in
//! `examples/quickstart` manifests on its fixed ports, checked the way the README and the
//! demo's own instructions say: the seed's gRPC reflection list through TLS, HTTPS verified
//! against the CA the demo generated, the plain-HTTP redirect to the demo's HTTPS listener, the
//! WebSocket echo over TLS, and the default backend for any other host.
//!
//! The demo binds fixed ports (HTTP 8080, HTTPS 8443, admin 9901; backends 9000, 9001, 50051),
//! which parallel tests or other programs may hold. So the test runs on a thread of its own that
//! first moves into a new network namespace (`unshare(CLONE_NEWNET)`: Linux, root or
//! CAP_SYS_ADMIN, as CI has) and brings its loopback up. The demo process is spawned from that
//! thread and inherits the namespace; the clients run on that thread's runtime. The manifests
//! are a copy in a temporary folder, so the generated CA and Secret never land in the checkout.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_rustls::rustls::RootCertStore;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use wasmgress_examples::greeter::proto::HelloRequest;

use crate::harness::certs::{self, BOTH_VERSIONS};
use crate::harness::grpc::{SEED_SERVICES, greeter_client, list_services};
use crate::harness::{Conn, Manifests, Req, Resp, Wasmgress, ws};

const HOST: &str = "demo.kubesre.com";
/// Upper bound for any one step; nothing here should come close.
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// Set in the copy of this test that [`rerun_in_user_namespace`] starts.
const RERUN: &str = "WASMGRESS_QUICKSTART_IN_USER_NAMESPACE";

#[test]
fn demo_serves_the_seed_walkthrough() {
    let thread = std::thread::Builder::new()
        .name("quickstart".into())
        .spawn(|| -> std::io::Result<()> {
            private_network()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the quickstart test");
            runtime.block_on(walkthrough());
            Ok(())
        })
        .expect("spawn the quickstart test thread");
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e))
            if e.kind() == std::io::ErrorKind::PermissionDenied
                && std::env::var_os(RERUN).is_none() =>
        {
            rerun_in_user_namespace(&e)
        }
        Ok(Err(e)) => panic!(
            "no network namespace of its own ({e}): the demo binds fixed ports, so this test \
             needs root, CAP_SYS_ADMIN or unprivileged user namespaces"
        ),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Without the privilege for a network namespace (a developer's `cargo test`), runs this one
/// test again in a user namespace that has it, the way `unshare --user --map-root-user --net`
/// does for any program, and fails if that copy fails.
fn rerun_in_user_namespace(why: &std::io::Error) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--"])
        .arg(&exe)
        .args([
            "quickstart::demo_serves_the_seed_walkthrough",
            "--exact",
            "--nocapture",
        ])
        .env(RERUN, "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("no network namespace ({why}) and `unshare` from util-linux cannot run: {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the test rerun in a user namespace (no privilege for a network namespace here: {why}) \
         failed: {}\n{stdout}\n{stderr}",
        output.status
    );
}

async fn walkthrough() {
    let folder = Manifests::new();
    copy_manifests(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart"),
        folder.path(),
    );
    let dir = folder.path().to_str().expect("utf-8 temp path");
    // Exactly the README's command but for the folder: the default listener addresses.
    let mut gw = Wasmgress::spawn(&["demo", "--dir", dir], &["http", "https", "admin"]).await;
    for (addr, name, port) in [
        (&mut gw.http, "http", 8080),
        (&mut gw.https, "https", 8443),
        (&mut gw.admin, "admin", 9901),
    ] {
        assert_eq!(gw.listeners[name].port(), port, "the README's {name} port");
        *addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    }
    let gw = gw.ready().await;
    let ca = folder.file("generated/ca.crt");
    let ca_pem = std::fs::read_to_string(&ca)
        .unwrap_or_else(|e| panic!("the demo's CA at {}: {e}", ca.display()));

    // The seed's check: `grpcurl -authority demo.kubesre.com 127.0.0.1:8443 list`, here also
    // verifying the certificate against the generated CA.
    let channel = grpc_channel(&gw, &ca_pem).await;
    let names = step("reflection list", list_services(channel.clone()))
        .await
        .unwrap_or_else(|s| panic!("reflection ListServices through the demo: {s:?}"));
    assert_eq!(names, SEED_SERVICES, "services listed through the demo");
    let reply = step(
        "SayHello",
        greeter_client(channel).say_hello(HelloRequest {
            name: "quickstart".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SayHello through the demo: {s:?}"));
    assert_eq!(reply.into_inner().message, "Hello quickstart");

    // `curl --cacert generated/ca.crt https://demo.kubesre.com:8443/hello`, over HTTP/2 and
    // HTTP/1.1.
    let roots = roots(&ca_pem);
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let config = certs::client_config(roots.clone(), &[alpn], BOTH_VERSIONS);
        let tls = gw
            .tls(HOST, config)
            .await
            .unwrap_or_else(|e| panic!("TLS to the demo, verified against its CA: {e}"));
        let mut conn = if alpn == b"h2" {
            Conn::h2(tls).await
        } else {
            Conn::h1(tls).await
        }
        .unwrap_or_else(|e| panic!("handshake over TLS: {e}"));
        let resp = conn
            .send(&Req::get(HOST, "/hello").scheme("https"))
            .await
            .unwrap_or_else(|e| panic!("GET https://{HOST}:8443/hello: {e}"));
        assert_echo(&resp);
    }

    // `curl -i -H 'Host: demo.kubesre.com' http://127.0.0.1:8080/hello`: to the demo's own
    // HTTPS listener, where the user can follow it.
    let redirect = gw.get(HOST, "/hello").await;
    assert_eq!(redirect.status, 308, "{}", redirect.summary());
    assert_eq!(
        redirect.header("location"),
        Some("https://demo.kubesre.com:8443/hello"),
        "{}",
        redirect.summary()
    );

    // `python3 -m websockets wss://demo.kubesre.com:8443/ws`.
    let config = certs::client_config(roots, &[b"http/1.1"], BOTH_VERSIONS);
    let tls = gw
        .tls(HOST, config)
        .await
        .unwrap_or_else(|e| panic!("TLS to the demo for /ws: {e}"));
    let url = format!("wss://{HOST}:8443/ws");
    let (mut socket, _) = ws::handshake(Box::new(tls), &url, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    step(
        "send on /ws",
        socket.send(Message::text("hello through the demo")),
    )
    .await
    .unwrap_or_else(|e| panic!("send on {url}: {e}"));
    let echoed = step("echo on /ws", socket.next()).await;
    match echoed {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello through the demo"),
        other => panic!("{url}: expected the text echoed, got {other:?}"),
    }

    // `curl http://127.0.0.1:8080/`: any other host falls through to the default backend.
    assert_echo(&gw.get("127.0.0.1", "/").await);
}

/// The demo's echo backend answered: 200, and its JSON names it.
fn assert_echo(resp: &Resp) {
    assert_eq!(resp.status, 200, "{}", resp.summary());
    assert_eq!(
        resp.backend().as_deref(),
        Some("echo"),
        "{}",
        resp.summary()
    );
}

/// The quickstart's manifests, without anything a previous local demo generated.
fn copy_manifests(from: impl AsRef<Path>, to: &Path) {
    let from = from.as_ref();
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("a file name");
            std::fs::copy(&path, to.join(name))
                .unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
        }
    }
}

fn roots(ca_pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate in the demo's ca.crt"))
            .expect("the demo's CA as a trust root");
    }
    assert!(!roots.is_empty(), "the demo's ca.crt holds no certificate");
    roots
}

/// What the README's `grpcurl` does: TLS with SNI and `:authority` demo.kubesre.com.
async fn grpc_channel(gw: &Wasmgress, ca_pem: &str) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(HOST);
    let endpoint = Endpoint::from_shared(format!("https://{}", gw.https))
        .expect("endpoint URI")
        .origin(format!("https://{HOST}").parse().expect("authority URI"))
        .tls_config(tls)
        .expect("tonic TLS configuration");
    step("gRPC channel", endpoint.connect())
        .await
        .unwrap_or_else(|e| panic!("gRPC channel to the demo's {}: {e:?}", gw.https))
}

async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {STEP_LIMIT:?}"))
}

/// Moves the calling thread, and what it spawns from now on, into a new network namespace
/// whose loopback is up.
fn private_network() -> std::io::Result<()> {
    // SAFETY: unshare takes no pointers; it only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A new namespace's loopback starts down.
    // SAFETY: a datagram socket used only for the two ioctls, closed before returning; `ifreq`
    // is plain data, zeroed before use, and outlives both calls.
    let (get, set, error) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        let get = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let set = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        (get, set, error)
    };
    assert!(get == 0 && set == 0, "bring up the loopback: {error}");
    Ok(())
}
