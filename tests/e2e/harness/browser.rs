//! A real browser as a test peer: [`Page`], a backend answering every request with one fixed
//! HTML document, and [`chromium_dom`], which loads a URL in Debian's headless Chromium, lets
//! the page's scripts run and returns the resulting DOM. Tests that need the browser fail,
//! never skip, when `chromium` is not installed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::task::JoinHandle;

use super::recorder::objects_at;

/// Upper bound for one Chromium run (start, load, scripts, dump); a few seconds in practice.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

/// Virtual milliseconds Chromium grants the page after it loads. Virtual time stands still
/// while a network request is in flight and jumps ahead when the page is idle, so the page's
/// fetches all finish inside it however slow the machine is, and an idle page ends at once.
const VIRTUAL_TIME_BUDGET_MS: u32 = 10_000;

/// A backend answering every request (any method, any path) with `html`; stopped when dropped.
pub struct Page {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Page {
    /// Starts a page backend called `name` on 127.0.0.1 and an ephemeral port.
    pub async fn start(name: &str, html: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a page backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("page backend local address");
        let html = Bytes::from(html.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let html = html.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let mut resp = Response::new(Full::new(html.clone()));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/html; charset=utf-8"),
                        );
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            task,
        }
    }

    /// Its Service (named after it) and EndpointSlice, as [`objects_at`].
    pub fn objects(&self) -> Vec<Value> {
        objects_at(&self.name, self.addr)
    }
}

/// Loads `url` in headless Chromium and returns the DOM (`--dump-dom`) once the page's scripts
/// have run to the end. Every `*.test` host resolves to 127.0.0.1 and every other host to
/// nothing, so the browser talks to the test's listeners only, never the network; a fresh
/// profile each time means no cache, cookie or preflight cache carries over between runs.
pub async fn chromium_dom(url: &str) -> String {
    let profile = tempfile::Builder::new()
        .prefix("wasmgress-e2e-chromium-")
        .tempdir()
        .expect("create a temporary Chromium profile");
    let args = [
        // Chromium's sandbox needs user namespaces, which containers running as root lack.
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        // Small container /dev/shm sizes crash renderers; temporary files work everywhere.
        "--disable-dev-shm-usage".to_owned(),
        // A proxy from the environment would take the `.test` hosts away from loopback.
        "--no-proxy-server".to_owned(),
        "--host-resolver-rules=MAP *.test 127.0.0.1, MAP * ~NOTFOUND".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
        // Without a budget the DOM is dumped at the load event, before any fetch answered.
        format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
        "--dump-dom".to_owned(),
        url.to_owned(),
    ];
    let run = Command::new("chromium")
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("chromium {args:?} did not finish within {BROWSER_LIMIT:?}"))
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `chromium` ({e}): this test needs a real browser; install Debian's \
                 chromium package (apt-get install chromium)"
            )
        });
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !dom.is_empty(),
        "chromium {args:?}: {}, stdout {dom:?}, stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The text of the element with `id` in a DOM serialised by Chromium (`<tag id="ID">text<`),
/// with the character references serialisation writes decoded; `None` if there is none.
pub fn element_text(dom: &str, id: &str) -> Option<String> {
    let marker = format!(" id=\"{id}\"");
    let start = dom.find(&marker)?;
    let text_start = start + dom[start..].find('>')? + 1;
    let text_end = text_start + dom[text_start..].find('<')?;
    let text = &dom[text_start..text_end];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&nbsp;", "\u{a0}")
            .replace("&amp;", "&"),
    )
}
