//! Consistent hashing (ingress-nginx `upstream-hash-by`, `-subset`): a request's key, and the
//! ring that maps keys to endpoints.
//!
//! The ring is built from the endpoints' addresses alone (160 points each, as nginx's `hash
//! ... consistent`), with CRC-32 as nginx uses, so every replica and every recompile with the
//! same endpoints maps a key to the same endpoint, and a change of endpoints moves only the
//! keys of the points that changed. With subsets (ingress-nginx's `chashsubset`) the sorted
//! endpoints form groups of the subset size, the ring maps a key to a group, and a random
//! member of the group takes the request. The key is hashed part by part, without building
//! it. This module maps; it does not pick between balancing algorithms (`Backend::pick`).

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;

/// Points per endpoint (nginx's `hash ... consistent` uses 160 per weight unit).
const POINTS: u32 = 160;

/// A piece of a hash key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(Box<[u8]>),
    /// `$request_uri`.
    RequestUri,
    /// `$uri`.
    Uri,
    /// `$host`.
    Host,
    /// `$remote_addr`.
    RemoteAddr,
    /// `$binary_remote_addr`.
    BinaryRemoteAddr,
    /// `$http_<name>`.
    Header(HeaderName),
    /// `$cookie_<name>`.
    Cookie(Box<str>),
    /// `$arg_<name>`.
    Arg(Box<str>),
}

/// A route's consistent-hash rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashBy {
    pub key: Box<[Part]>,
    /// Group size with `upstream-hash-by-subset`.
    pub subset: Option<u32>,
}

/// What a key may read of a request.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub request_uri: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub client: IpAddr,
    pub headers: &'a HeaderMap,
}

impl HashBy {
    /// The CRC-32 of the request's key.
    pub fn hash(&self, facts: &Facts<'_>) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for part in &self.key {
            match part {
                Part::Literal(bytes) => h.update(bytes),
                Part::RequestUri => h.update(facts.request_uri.as_bytes()),
                Part::Uri => h.update(facts.path.as_bytes()),
                Part::Host => h.update(facts.host.as_bytes()),
                Part::RemoteAddr => {
                    // Formatted on the stack: an address is at most 45 bytes as text.
                    let mut buf = [0u8; 64];
                    let mut cursor = std::io::Cursor::new(&mut buf[..]);
                    let _ = write!(cursor, "{}", facts.client);
                    let len = usize::try_from(cursor.position()).unwrap_or(0);
                    h.update(&buf[..len]);
                }
                Part::BinaryRemoteAddr => match facts.client {
                    IpAddr::V4(ip) => h.update(&ip.octets()),
                    IpAddr::V6(ip) => h.update(&ip.octets()),
                },
                Part::Header(name) => {
                    if let Some(v) = facts.headers.get(name) {
                        h.update(v.as_bytes());
                    }
                }
                Part::Cookie(name) => {
                    if let Some(v) = crate::canary::cookie(facts.headers, name) {
                        h.update(v);
                    }
                }
                Part::Arg(name) => {
                    if let Some(v) = arg(facts.request_uri, name) {
                        h.update(v.as_bytes());
                    }
                }
            }
        }
        h.finalize()
    }
}

/// The first value of query parameter `name`, as sent (nginx `$arg_NAME`).
fn arg<'u>(request_uri: &'u str, name: &str) -> Option<&'u str> {
    let (_, query) = request_uri.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // nginx compares argument names without regard to case.
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// Points on the ring mapping hashes to members (endpoint or group indices).
#[derive(Debug)]
pub struct Ring {
    points: Box<[(u32, u32)]>,
}

impl Ring {
    /// A ring over members named by `names` (their addresses), in order.
    pub fn new<'a>(names: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut points = Vec::new();
        for (member, name) in names.enumerate() {
            let member = u32::try_from(member).unwrap_or(u32::MAX);
            // As nginx's `hash ... consistent`: each point is the CRC of the name and the
            // previous point. (CRC-32 is linear: points of the name and a counter would fall in
            // the same pattern for every endpoint, and the ring would be lopsided.)
            let mut base = crc32fast::Hasher::new();
            base.update(name);
            base.update(b"\0");
            let mut previous = 0u32;
            for _ in 0..POINTS {
                let mut h = base.clone();
                h.update(&previous.to_le_bytes());
                previous = h.finalize();
                points.push((previous, member));
            }
        }
        points.sort_unstable();
        Self {
            points: points.into(),
        }
    }

    /// The member whose point follows `hash` on the ring.
    pub fn member(&self, hash: u32) -> Option<usize> {
        let i = self.points.partition_point(|(p, _)| *p < hash);
        let (_, member) = self.points.get(i).or_else(|| self.points.first())?;
        usize::try_from(*member).ok()
    }
}

/// The ring of a backend's endpoints (one member per endpoint).
pub fn endpoint_ring(addrs: &[SocketAddr]) -> Ring {
    let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    Ring::new(names.iter().map(String::as_bytes))
}

/// The groups of `size` endpoints (by index, in address order; the last group is filled up
/// from the first endpoints, as ingress-nginx's subsets are all of one size) and their ring.
pub fn subset_ring(addrs: &[SocketAddr], size: u32) -> (Vec<Vec<usize>>, Ring) {
    let size = usize::try_from(size.max(1))
        .unwrap_or(1)
        .min(addrs.len().max(1));
    let n = addrs.len();
    let groups: Vec<Vec<usize>> = (0..n.div_ceil(size))
        .map(|g| (0..size).map(|i| (g * size + i) % n).collect())
        .collect();
    let names: Vec<String> = groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|&i| addrs[i].to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let ring = Ring::new(names.iter().map(String::as_bytes));
    (groups, ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| format!("10.0.0.{i}:8080").parse().expect("addr"))
            .collect()
    }

    fn facts<'a>(uri: &'a str, headers: &'a HeaderMap) -> Facts<'a> {
        Facts {
            request_uri: uri,
            path: uri.split('?').next().unwrap_or("/"),
            host: "a.test",
            client: "192.0.2.7".parse().expect("ip"),
            headers,
        }
    }

    #[test]
    fn keys_read_the_parts_they_name() {
        let by = |key: Vec<Part>| HashBy {
            key: key.into(),
            subset: None,
        };
        let h = HeaderMap::new();
        let uri = by(vec![Part::RequestUri]);
        assert_eq!(
            uri.hash(&facts("/a?x=1", &h)),
            uri.hash(&facts("/a?x=1", &h))
        );
        assert_ne!(
            uri.hash(&facts("/a?x=1", &h)),
            uri.hash(&facts("/a?x=2", &h))
        );
        let by_arg = by(vec![Part::Arg("user".into())]);
        assert_eq!(
            by_arg.hash(&facts("/a?user=7&x=1", &h)),
            by_arg.hash(&facts("/b?x=2&user=7", &h)),
            "only the argument counts"
        );
        let addr = by(vec![Part::Literal((*b"ip:").into()), Part::RemoteAddr]);
        let mut text = crc32fast::Hasher::new();
        text.update(b"ip:192.0.2.7");
        assert_eq!(addr.hash(&facts("/", &h)), text.finalize());
        let mut with_cookie = HeaderMap::new();
        with_cookie.insert("cookie", "sid=abc; x=y".parse().expect("value"));
        let by_cookie = by(vec![Part::Cookie("sid".into())]);
        let mut other = HeaderMap::new();
        other.insert("cookie", "sid=abd".parse().expect("value"));
        assert_ne!(
            by_cookie.hash(&facts("/", &with_cookie)),
            by_cookie.hash(&facts("/", &other))
        );
    }

    #[test]
    fn rings_agree_across_builds_and_move_a_bounded_share() {
        let five = addrs(5);
        let (a, b) = (endpoint_ring(&five), endpoint_ring(&five));
        let keys: Vec<u32> = (0..10_000u32)
            .map(|k| crc32fast::hash(&k.to_be_bytes()))
            .collect();
        assert!(keys.iter().all(|k| a.member(*k) == b.member(*k)));
        // Every endpoint takes a fair share.
        let mut counts = [0usize; 5];
        for k in &keys {
            counts[a.member(*k).expect("member")] += 1;
        }
        assert!(
            counts.iter().all(|c| (1_500..2_500).contains(c)),
            "{counts:?}"
        );
        // Adding a sixth moves about a sixth of the keys, all of them to the new one.
        let six = addrs(6);
        let c = endpoint_ring(&six);
        let moved: Vec<&u32> = keys
            .iter()
            .filter(|k| five[a.member(**k).expect("m")] != six[c.member(**k).expect("m")])
            .collect();
        assert!((800..2_600).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|k| c.member(**k) == Some(5)));
    }

    #[test]
    fn subsets_are_groups_of_the_size_in_address_order() {
        let (groups, ring) = subset_ring(&addrs(7), 3);
        assert_eq!(groups, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 0, 1]]);
        assert!(ring.member(12345).is_some_and(|g| g < 3));
        let (one, _) = subset_ring(&addrs(2), 5);
        assert_eq!(
            one,
            vec![vec![0, 1]],
            "a subset is never larger than the backend"
        );
    }
}
