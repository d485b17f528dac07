//! Who may connect to a service: its source ACL (`[service.access]`) and per-client limits
//! (`[service.limits]`), and the one decision that applies them, [`admit`].
//!
//! Owns: the prefix sets built from the allow and deny lists ([`AccessList`]), the service's
//! [`Admission`] (the ACL and the shared [`ClientTable`]), the decision and its order (ACL, then
//! the client's live connections, then its rate), counting and logging refusals, and the guard
//! that gives a live connection's count back. Does not own what happens to a refused
//! connection or datagram (the data plane resets or drops it: `dataplane::admission`), nor the
//! table itself (`super::client_table`).
//!
//! Cost: with neither table configured, two `Option` checks. An ACL check is two walks of a
//! binary prefix trie (deny, then allow) of at most 32 or 128 steps, whatever the number of
//! prefixes. The limits cost one short lock of one shard of the client table.
//!
//! Addresses are taken in canonical form: an IPv4 client on a dual-stack listener
//! (`::ffff:10.0.0.1`) matches IPv4 prefixes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixSet;

use crate::config::{Access, ClientLimits};

use super::ServiceState;
use super::client_table::{ClientTable, Over, Permit};
use super::log_limit::Reason;

/// Why a client was refused; the `reason` label of `ringlb_service_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is denied, or not allowed.
    Acl,
    /// It holds `max_connections_per_client` already.
    ClientConnections,
    /// It opened connections faster than `connection_rate_per_client` allows.
    ClientRate,
}

impl Refusal {
    /// Every refusal, in the order `/metrics` lists them.
    pub const ALL: [Refusal; 3] = [
        Refusal::Acl,
        Refusal::ClientConnections,
        Refusal::ClientRate,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Acl => "acl",
            Refusal::ClientConnections => "client_connections",
            Refusal::ClientRate => "client_rate",
        }
    }
}

/// One list's prefixes, per family.
#[derive(Default)]
struct Prefixes {
    v4: PrefixSet<Ipv4Net>,
    v6: PrefixSet<Ipv6Net>,
}

impl Prefixes {
    fn new(list: &[IpNet]) -> Prefixes {
        let mut p = Prefixes::default();
        for net in list {
            match net {
                IpNet::V4(n) => {
                    p.v4.insert(*n);
                }
                IpNet::V6(n) => {
                    p.v6.insert(*n);
                }
            }
        }
        p
    }

    /// Whether some prefix covers `ip`.
    fn covers(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.get_spm(&Ipv4Net::from(a)).is_some(),
            IpAddr::V6(a) => self.v6.get_spm(&Ipv6Net::from(a)).is_some(),
        }
    }
}

/// The allow and deny lists of a service as prefix sets.
pub struct AccessList {
    /// `None`: everyone not denied.
    allow: Option<Prefixes>,
    deny: Prefixes,
}

impl AccessList {
    /// Builds the sets (off the data path: when the snapshot is built).
    pub fn new(access: &Access) -> AccessList {
        AccessList {
            allow: access.allow.as_deref().map(Prefixes::new),
            deny: Prefixes::new(&access.deny),
        }
    }

    /// Whether `ip` may connect: not denied, and allowed when there is an allow list.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.covers(ip) && self.allow.as_ref().is_none_or(|a| a.covers(ip))
    }
}

impl fmt::Debug for AccessList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |p: &Prefixes| p.v4.len() + p.v6.len();
        f.debug_struct("AccessList")
            .field("allow", &self.allow.as_ref().map(count))
            .field("deny", &count(&self.deny))
            .finish()
    }
}

/// A service's admission state: its ACL and its client table, when configured.
#[derive(Debug, Default)]
pub struct Admission {
    acl: Option<Arc<AccessList>>,
    /// The lists `acl` was built from.
    access: Option<Access>,
    clients: Option<Arc<ClientTable>>,
    /// The settings `clients` was made for.
    limits: Option<ClientLimits>,
}

impl Admission {
    /// Takes `before`'s ACL when the lists are the same (a snapshot is rebuilt on every admin
    /// change and discovery answer; a large ACL is built only when it changes), and its client
    /// table when the limits are the same (so a reload forgets no client's count or bucket).
    pub fn build(
        access: Option<&Access>,
        limits: Option<&ClientLimits>,
        before: Option<&Admission>,
    ) -> Admission {
        let acl = match (access, before) {
            (Some(a), Some(b)) if b.access.as_ref() == Some(a) => b.acl.clone(),
            (Some(a), _) => Some(Arc::new(AccessList::new(a))),
            (None, _) => None,
        };
        let active = limits.filter(|l| l.max_connections.is_some() || l.rate.is_some());
        let clients = match (active, before) {
            (Some(l), Some(b)) if b.limits.as_ref() == Some(l) => b.clients.clone(),
            (Some(l), _) => Some(Arc::new(ClientTable::new(l))),
            (None, _) => None,
        };
        Admission {
            acl,
            access: access.cloned(),
            clients,
            limits: active.cloned(),
        }
    }

    /// The client table, when the service has per-client limits.
    pub fn clients(&self) -> Option<&ClientTable> {
        self.clients.as_deref()
    }
}

/// A live connection's place in its client's count; gives it back when dropped.
#[derive(Debug)]
pub struct ClientGuard<'a>(Option<(&'a ClientTable, Permit)>);

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        if let Some((table, permit)) = &self.0 {
            table.release(permit);
        }
    }
}

/// Whether `client` may open a connection to the service now: its ACL, then (TCP) its
/// per-client limits. A refusal is counted in the service's counters and logged (at most one
/// line per reason per second, with the number of refusals not logged); an eviction from the
/// client table is counted. The guard holds the client's live count until dropped.
pub fn admit(state: &ServiceState, client: SocketAddr) -> Result<ClientGuard<'_>, Refusal> {
    let admission = &state.admission;
    if let Some(acl) = &admission.acl
        && !acl.permits(client.ip())
    {
        return Err(refuse(state, client, Refusal::Acl));
    }
    let Some(table) = admission.clients.as_deref() else {
        return Ok(ClientGuard(None));
    };
    let (result, evicted) = table.admit(client.ip());
    if evicted {
        state.counters.client_evictions.inc();
    }
    match result {
        Ok(permit) => Ok(ClientGuard(Some((table, permit)))),
        Err(Over::Connections) => Err(refuse(state, client, Refusal::ClientConnections)),
        Err(Over::Rate) => Err(refuse(state, client, Refusal::ClientRate)),
    }
}

/// Whether a datagram from `client` may open a flow (UDP services: the ACL only). A refusal is
/// counted and logged as [`admit`] does.
pub fn admit_datagram(state: &ServiceState, client: SocketAddr) -> bool {
    match &state.admission.acl {
        Some(acl) if !acl.permits(client.ip()) => {
            refuse(state, client, Refusal::Acl);
            false
        }
        _ => true,
    }
}

/// Counts and logs one refusal.
fn refuse(state: &ServiceState, client: SocketAddr, why: Refusal) -> Refusal {
    let counters = &state.counters;
    let (counter, reason, what) = match why {
        Refusal::Acl => (
            &counters.refused_acl,
            Reason::AccessDenied,
            "client address not allowed by [service.access]",
        ),
        Refusal::ClientConnections => (
            &counters.refused_client_connections,
            Reason::ClientLimit,
            "client at max_connections_per_client",
        ),
        Refusal::ClientRate => (
            &counters.refused_client_rate,
            Reason::ClientLimit,
            "client over connection_rate_per_client",
        ),
    };
    counter.inc();
    if let Some(suppressed) = reason.admit() {
        tracing::info!(service = %state.config.name, client = %client.ip(), suppressed,
            "{what}: refused");
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: Option<&[&str]>, deny: &[&str]) -> AccessList {
        let nets = |l: &[&str]| l.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
        AccessList::new(&Access {
            allow: allow.map(nets),
            deny: nets(deny),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_over_allow_and_allow_limits_the_rest() {
        let acl = list(
            Some(&["10.0.0.0/8", "192.168.1.0/24", "::1/128"]),
            &["10.0.66.0/24"],
        );
        assert!(acl.permits(ip("10.1.2.3")));
        assert!(acl.permits(ip("192.168.1.200")));
        assert!(acl.permits(ip("::1")));
        assert!(!acl.permits(ip("10.0.66.7")), "deny wins");
        assert!(!acl.permits(ip("192.168.2.1")), "outside the allow list");
        assert!(!acl.permits(ip("::2")));
        assert!(
            acl.permits(ip("::ffff:10.9.9.9")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!acl.permits(ip("::ffff:10.0.66.1")));
    }

    #[test]
    fn without_an_allow_list_everyone_not_denied_is_in() {
        let acl = list(None, &["127.0.0.3/32", "2001:db8::/32"]);
        assert!(acl.permits(ip("127.0.0.2")));
        assert!(!acl.permits(ip("127.0.0.3")));
        assert!(!acl.permits(ip("2001:db8:ffff::1")));
        assert!(acl.permits(ip("2001:db9::1")));
        let open = list(None, &[]);
        assert!(open.permits(ip("203.0.113.9")));
    }

    #[test]
    fn a_rebuild_keeps_the_client_table_and_acl_while_their_settings_stay() {
        let access = Access {
            allow: None,
            deny: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let limits = ClientLimits {
            max_connections: Some(2),
            rate: None,
            burst: 0,
            ipv6_prefix: 64,
            max_clients: 10,
        };
        let first = Admission::build(Some(&access), Some(&limits), None);
        let same = Admission::build(Some(&access), Some(&limits), Some(&first));
        let ptr = |a: &Admission| a.clients.as_ref().map(Arc::as_ptr);
        assert_eq!(ptr(&same), ptr(&first));
        assert!(Arc::ptr_eq(
            same.acl.as_ref().unwrap(),
            first.acl.as_ref().unwrap()
        ));
        let wider = ClientLimits {
            max_connections: Some(3),
            ..limits.clone()
        };
        let changed = Admission::build(None, Some(&wider), Some(&same));
        assert_ne!(ptr(&changed), ptr(&first), "new limits, new table");
        assert!(changed.acl.is_none());
        // Limits with neither a count nor a rate make no table.
        let idle = ClientLimits {
            max_connections: None,
            ..limits
        };
        assert!(
            Admission::build(None, Some(&idle), None)
                .clients()
                .is_none()
        );
    }

    #[test]
    fn ten_thousand_prefixes_decide_like_a_scan_of_the_list() {
        // 10,000 /24s spread over 10.0.0.0/8 and 172.16.0.0/12, every other one denied.
        let nets: Vec<IpNet> = (0..10_000u32)
            .map(|i| {
                let base = if i % 2 == 0 { 0x0a00_0000 } else { 0xac10_0000 };
                let addr = std::net::Ipv4Addr::from_bits(base + ((i * 7919) % 4096) * 256);
                IpNet::V4(Ipv4Net::new(addr, 24).unwrap())
            })
            .collect();
        let (allow, deny): (Vec<_>, Vec<_>) =
            nets.iter().enumerate().partition(|(i, _)| i % 3 != 0);
        let allow: Vec<IpNet> = allow.into_iter().map(|(_, n)| *n).collect();
        let deny: Vec<IpNet> = deny.into_iter().map(|(_, n)| *n).collect();
        let acl = AccessList::new(&Access {
            allow: Some(allow.clone()),
            deny: deny.clone(),
        });
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5_000 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from_bits(
                if rng.bool() { 0x0a00_0000 } else { 0xac10_0000 } + rng.u32(..0x10_0000),
            ));
            let expected =
                !deny.iter().any(|n| n.contains(&a)) && allow.iter().any(|n| n.contains(&a));
            assert_eq!(acl.permits(a), expected, "{a}");
        }
    }
}
