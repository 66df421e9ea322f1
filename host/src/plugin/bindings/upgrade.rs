//! What a `wasmgress:plugin@0.1.0` component returns, turned into the current (0.2.0) values,
//! so that everything past the call knows one version only.
//!
//! Owns the version mapping and nothing else: a 0.1.0 policy's record fields become the
//! equivalent 0.2.0 directives, in the order 0.1.0 applied them. Nothing is validated here
//! (the policy conversion does that for every version alike).

use super::v0_1::wasmgress::plugin::types as old;
use super::wit as new;

pub fn info(i: old::Info) -> new::Info {
    new::Info {
        name: i.name,
        version: i.version,
        keys: i.keys,
        prefixes: i.prefixes,
        hooks: i.hooks.into_iter().map(hook).collect(),
        // 0.1.0 had no metrics of its own.
        metrics: Vec::new(),
    }
}

fn hook(h: old::Hook) -> new::Hook {
    match h {
        old::Hook::RequestHeaders => new::Hook::RequestHeaders,
        old::Hook::ResponseHeaders => new::Hook::ResponseHeaders,
    }
}

pub fn diagnostic(d: old::Diagnostic) -> new::Diagnostic {
    new::Diagnostic {
        key: d.key,
        severity: match d.severity {
            old::Severity::Error => new::Severity::Error,
            old::Severity::Warning => new::Severity::Warning,
            old::Severity::Info => new::Severity::Info,
        },
        message: d.message,
    }
}

pub fn configured(
    r: Result<old::Policy, Vec<old::Diagnostic>>,
) -> Result<new::Policy, Vec<new::Diagnostic>> {
    match r {
        Ok(p) => Ok(policy(p)),
        Err(list) => Err(list.into_iter().map(diagnostic).collect()),
    }
}

/// The 0.1.0 record's fields, as directives.
pub fn policy(p: old::Policy) -> new::Policy {
    use new::Directive as D;
    let mut d = Vec::new();
    d.extend(
        p.upstream_protocol
            .map(|u| D::UpstreamProtocol(protocol(u))),
    );
    d.extend(p.connect_timeout_ms.map(D::ConnectTimeoutMs));
    d.extend(p.read_timeout_ms.map(D::ReadTimeoutMs));
    d.extend(p.send_timeout_ms.map(D::SendTimeoutMs));
    d.extend(p.upstream_http_version.map(|v| {
        D::UpstreamHttpVersion(match v {
            old::HttpVersion::Http10 => new::HttpVersion::Http10,
            old::HttpVersion::Http11 => new::HttpVersion::Http11,
        })
    }));
    d.extend(
        p.request_headers
            .into_iter()
            .map(|e| D::RequestHeader(edit(e))),
    );
    d.extend(
        p.response_headers
            .into_iter()
            .map(|e| D::ResponseHeader(edit(e))),
    );
    d.extend(p.respond.map(|r| D::Respond(respond(r))));
    d.extend(p.app_root.map(D::AppRoot));
    d.extend(p.ssl_redirect.map(D::SslRedirect));
    d.extend(p.force_ssl_redirect.map(D::ForceSslRedirect));
    d.extend(p.rewrite_target.map(D::RewriteTarget));
    d.extend(p.use_regex.map(D::UseRegex));
    new::Policy {
        directives: d,
        hooks: p.hooks.into_iter().map(hook).collect(),
        notes: p.notes.into_iter().map(diagnostic).collect(),
    }
}

fn protocol(u: old::UpstreamProtocol) -> new::UpstreamProtocol {
    match u {
        old::UpstreamProtocol::Http => new::UpstreamProtocol::Http,
        old::UpstreamProtocol::Https => new::UpstreamProtocol::Https,
        old::UpstreamProtocol::Grpc => new::UpstreamProtocol::Grpc,
        old::UpstreamProtocol::Grpcs => new::UpstreamProtocol::Grpcs,
        old::UpstreamProtocol::AutoHttp => new::UpstreamProtocol::AutoHttp,
    }
}

fn parts(list: Vec<old::TemplatePart>) -> Vec<new::TemplatePart> {
    list.into_iter()
        .map(|p| match p {
            old::TemplatePart::Literal(s) => new::TemplatePart::Literal(s),
            old::TemplatePart::Variable(v) => new::TemplatePart::Variable(match v {
                old::RequestVariable::Host => new::RequestVariable::Host,
                old::RequestVariable::RemoteAddr => new::RequestVariable::RemoteAddr,
                old::RequestVariable::Scheme => new::RequestVariable::Scheme,
                old::RequestVariable::RequestUri => new::RequestVariable::RequestUri,
            }),
        })
        .collect()
}

fn header(h: old::Header) -> new::Header {
    new::Header {
        name: h.name,
        value: match h.value {
            old::HeaderValue::Text(s) => new::HeaderValue::Text(s),
            old::HeaderValue::Bytes(b) => new::HeaderValue::Bytes(b),
            old::HeaderValue::Template(t) => new::HeaderValue::Template(parts(t)),
        },
    }
}

fn edit(e: old::HeaderEdit) -> new::HeaderEdit {
    match e {
        old::HeaderEdit::Set(h) => new::HeaderEdit::Set(header(h)),
        old::HeaderEdit::Append(h) => new::HeaderEdit::Append(header(h)),
        old::HeaderEdit::Remove(n) => new::HeaderEdit::Remove(n),
    }
}

fn respond(r: old::StaticResponse) -> new::StaticResponse {
    match r {
        old::StaticResponse::Redirect(r) => new::StaticResponse::Redirect(new::Redirect {
            status: r.status,
            location: parts(r.location),
        }),
        old::StaticResponse::Fixed(f) => new::StaticResponse::Fixed(new::FixedResponse {
            status: f.status,
            headers: f.headers,
            body: f.body,
        }),
    }
}

pub fn action(a: old::Action) -> new::Action {
    match a {
        old::Action::Continue => new::Action::Continue,
        old::Action::RespondNow(r) => new::Action::RespondNow(new::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }),
    }
}
