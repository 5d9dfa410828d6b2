//! Brute-force brake: ten failed authentications within a minute from one peer address get that
//! address `429 Too Many Requests` for 60 seconds. The peer is the TCP peer, or, when that is a
//! trusted proxy (`[api] trusted_proxies`), the last address of `X-Forwarded-For` that is not one.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use janitor_config::IpRange;

/// Failures that trip the brake…
pub const MAX_FAILURES: usize = 10;
/// … within this window …
pub const WINDOW: Duration = Duration::from_secs(60);
/// … block the peer this long.
pub const BLOCK: Duration = Duration::from_secs(60);
/// Peers remembered at most; past that, the ones with nothing recent are forgotten.
const MAX_PEERS: usize = 100_000;

#[derive(Default)]
struct Peer {
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

/// Failure counts per peer address.
#[derive(Default)]
pub struct Throttle {
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

impl Throttle {
    /// Seconds the peer stays blocked, if it is.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let until = peers.get(&ip)?.blocked_until?;
        (until > now).then(|| (until - now).as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Records a failed authentication; true when it blocks the peer.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            peers.retain(|_, p| {
                p.blocked_until.is_some_and(|u| u > now)
                    || p.failures.back().is_some_and(|t| now - *t < WINDOW)
            });
        }
        let peer = peers.entry(ip).or_default();
        while peer
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            peer.failures.pop_front();
        }
        peer.failures.push_back(now);
        if peer.failures.len() >= MAX_FAILURES {
            peer.failures.clear();
            peer.blocked_until = Some(now + BLOCK);
            return true;
        }
        false
    }
}

/// The address a request comes from: the TCP peer, unless it is a trusted proxy; then the
/// right-most `X-Forwarded-For` address that is not a trusted proxy (the left ones are the
/// client's to write, so they are never believed).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_in_a_minute_block_for_a_minute() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        for i in 0..9 {
            assert!(!t.fail(ip, start + Duration::from_secs(i)));
        }
        assert_eq!(t.blocked(ip, start + Duration::from_secs(9)), None);
        assert!(t.fail(ip, start + Duration::from_secs(9)));
        assert_eq!(t.blocked(ip, start + Duration::from_secs(9)), Some(60));
        assert_eq!(t.blocked(ip, start + Duration::from_secs(68)), Some(1));
        assert_eq!(t.blocked(ip, start + Duration::from_secs(69)), None);
        assert_eq!(t.blocked(other, start + Duration::from_secs(9)), None);
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_block() {
        let t = Throttle::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let start = Instant::now();
        for i in 0..30 {
            assert!(!t.fail(ip, start + Duration::from_secs(7 * i)));
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [IpRange::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = Some("198.51.100.1, 198.51.100.2, 10.0.0.7");
        assert_eq!(client_ip(stranger, xff, &trusted), stranger);
        assert_eq!(
            client_ip(proxy, xff, &trusted),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, None, &trusted), proxy);
        assert_eq!(client_ip(proxy, Some("junk"), &trusted), proxy);
        assert_eq!(client_ip(proxy, xff, &[]), proxy);
    }
}
