//! Source-address rules: ingress-nginx `denylist-source-range` and `allowlist-source-range`
//! (formerly `whitelist-source-range`), as nginx's `deny`/`allow` directives run them: the
//! deny ranges first, then, when an allow list exists, everything outside it is refused.
//!
//! Owns matching an address against CIDR lists. Lists are folded at compile time into sorted,
//! merged intervals, so a check is a binary search whatever the list's length and allocates
//! nothing.

use ipnet::IpNet;
use std::net::IpAddr;

/// Sorted, non-overlapping, non-adjacent inclusive intervals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Ranges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Ord + Copy>(mut list: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    list.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(list.len());
    for (lo, hi) in list {
        match out.last_mut() {
            // Overlapping or adjacent: extend the previous interval.
            Some(last) if next(last.1).is_none_or(|n| lo <= n) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn contains<T: Ord + Copy>(list: &[(T, T)], x: T) -> bool {
    // The last interval starting at or before `x` is the only one that can hold it.
    let i = list.partition_point(|&(lo, _)| lo <= x);
    i > 0 && list[i - 1].1 >= x
}

impl Ranges {
    fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Ranges {
            v4: merge(v4, |x: u32| x.checked_add(1)),
            v6: merge(v6, |x: u128| x.checked_add(1)),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => contains(&self.v4, u32::from(a)),
            IpAddr::V6(a) => contains(&self.v6, u128::from(a)),
        }
    }
}

/// A route's source-address rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    deny: Ranges,
    /// `None`: no allow list, every address not denied passes.
    allow: Option<Ranges>,
}

impl Sources {
    /// `allow` empty means no allow list (not "allow nobody": compile refuses an empty list
    /// before it gets here).
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Sources {
            deny: Ranges::new(&deny),
            allow: (!allow.is_empty()).then(|| Ranges::new(&allow)),
        }
    }

    /// Does this client address pass? An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
    /// dual-stack socket reports for an IPv4 client) is judged as the IPv4 address it is.
    pub fn admits(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        if self.deny.contains(client) {
            return false;
        }
        self.allow.as_ref().is_none_or(|a| a.contains(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn allow_and_deny_as_nginx_orders_them() {
        let s = Sources::new(
            nets(&["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]),
            nets(&["10.9.0.0/16"]),
        );
        assert!(s.admits(ip("10.1.2.3")));
        assert!(s.admits(ip("192.168.1.7")));
        assert!(s.admits(ip("::ffff:10.1.2.3")));
        assert!(s.admits(ip("2001:db8::1")));
        assert!(!s.admits(ip("10.9.1.1")), "deny wins over a wider allow");
        assert!(!s.admits(ip("192.168.1.8")));
        assert!(!s.admits(ip("11.0.0.0")));
        assert!(!s.admits(ip("2001:db9::1")));
    }

    #[test]
    fn deny_only_admits_everyone_else() {
        let s = Sources::new(Vec::new(), nets(&["0.0.0.0/0"]));
        assert!(!s.admits(ip("8.8.8.8")));
        assert!(s.admits(ip("::1")), "an IPv4 deny-all leaves IPv6 alone");
    }

    #[test]
    fn edges_of_the_address_space() {
        let s = Sources::new(nets(&["255.255.255.255/32", "0.0.0.0/32"]), Vec::new());
        assert!(s.admits(ip("255.255.255.255")));
        assert!(s.admits(ip("0.0.0.0")));
        assert!(!s.admits(ip("255.255.255.254")));
        let all = Sources::new(nets(&["::/0"]), Vec::new());
        assert!(all.admits(ip("ffff::1")));
    }

    proptest! {
        /// The merged intervals answer exactly like checking every CIDR one by one.
        #[test]
        fn agrees_with_a_linear_scan(
            list in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..12),
            probes in proptest::collection::vec(any::<u32>(), 1..32),
        ) {
            let nets: Vec<IpNet> = list
                .iter()
                .map(|&(a, len)| {
                    IpNet::new(IpAddr::V4(a.into()), len).expect("prefix").trunc()
                })
                .collect();
            let ranges = Ranges::new(&nets);
            for p in probes {
                let addr = IpAddr::V4(p.into());
                prop_assert_eq!(ranges.contains(addr), nets.iter().any(|n| n.contains(&addr)));
            }
        }
    }
}
