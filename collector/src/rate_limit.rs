//! Rate limiting with `governor`: requests and events per client, requests per view, and a
//! global request ceiling.
//!
//! A client is its IPv4 address, or its IPv6 network of `ipv6_prefix_len` bits (default /64,
//! what one subscriber usually gets, so rotating addresses within it gains nothing). The
//! per-client limit is checked before the global one, so a client refused by its own limit
//! takes nothing from everyone else's budget.
//!
//! Keyed limiter state must stay bounded under millions of distinct (possibly forged) keys,
//! so keys are hashed with a per-process random seed into a fixed number of buckets: the maps
//! can never hold more than that many entries, whatever clients send. Two clients sharing a
//! bucket share a budget, which errs on the strict side. [`RateLimits::housekeeping`] drops
//! buckets that are back to full capacity so idle memory is returned.

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

type Keyed = RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock>;
type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Which limit a request hit, and how long until it may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: &'static str,
    pub retry_after: Duration,
}

pub struct RateLimits {
    per_ip: Option<Keyed>,
    events_per_ip: Option<Keyed>,
    per_view: Option<Keyed>,
    global: Option<Direct>,
    ipv6_prefix_len: u8,
    buckets: u64,
    seed: RandomState,
    clock: DefaultClock,
}

fn quota(per_second: u32, burst_factor: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(burst_factor.max(1))).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// The limits, per second; 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    /// Requests per client.
    pub per_ip: u32,
    /// Events per client (a request of n events takes n).
    pub events_per_ip: u32,
    /// Requests per view.
    pub per_view: u32,
    /// Requests over all clients.
    pub global: u32,
    /// Burst allowance, as a multiple of the per-second rates.
    pub burst_factor: u32,
    /// Keyed limiter state is bounded by hashing keys into this many buckets.
    pub buckets: u64,
    /// IPv6 clients are keyed by their network of this many bits (1-128).
    pub ipv6_prefix_len: u8,
}

/// The rate-limit key of a client address: IPv4 as is, IPv6 masked to its network.
pub fn client_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_prefix_len.clamp(1, 128));
                let mask = u128::MAX << (128 - bits);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

impl RateLimits {
    pub fn new(c: RateConfig) -> Self {
        RateLimits {
            per_ip: quota(c.per_ip, c.burst_factor).map(RateLimiter::keyed),
            events_per_ip: quota(c.events_per_ip, c.burst_factor).map(RateLimiter::keyed),
            per_view: quota(c.per_view, c.burst_factor).map(RateLimiter::keyed),
            global: quota(c.global, c.burst_factor).map(RateLimiter::direct),
            ipv6_prefix_len: c.ipv6_prefix_len,
            buckets: c.buckets.max(1),
            seed: RandomState::new(),
            clock: DefaultClock::default(),
        }
    }

    fn bucket<K: std::hash::Hash>(&self, key: K) -> u64 {
        self.seed.hash_one(key) % self.buckets
    }

    fn limited<P: governor::clock::Reference>(
        &self,
        scope: &'static str,
        not_until: governor::NotUntil<P>,
    ) -> Limited
    where
        DefaultClock: Clock<Instant = P>,
    {
        Limited {
            scope,
            retry_after: not_until.wait_time_from(self.clock.now()),
        }
    }

    /// Per-client and global request limits, checked before the body is read; the client's
    /// own limit first.
    pub fn check_client(&self, ip: IpAddr) -> Result<(), Limited> {
        if let Some(per_ip) = &self.per_ip {
            per_ip
                .check_key(&self.bucket(client_key(ip, self.ipv6_prefix_len)))
                .map_err(|n| self.limited("client", n))?;
        }
        if let Some(global) = &self.global {
            global.check().map_err(|n| self.limited("global", n))?;
        }
        Ok(())
    }

    /// Per-client event limit, checked once the events are counted: a request of `events`
    /// events takes that many. More events than the whole burst allowance are refused too.
    pub fn check_client_events(&self, ip: IpAddr, events: usize) -> Result<(), Limited> {
        let (Some(limiter), Some(n)) = (&self.events_per_ip, NonZeroU32::new(events as u32)) else {
            return Ok(());
        };
        match limiter.check_key_n(&self.bucket(client_key(ip, self.ipv6_prefix_len)), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.limited("client_events", not_until)),
            Err(_insufficient) => Err(Limited {
                scope: "client_events",
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Per-view limit, checked once the envelope is parsed.
    pub fn check_view(&self, view_id: &str) -> Result<(), Limited> {
        if let Some(per_view) = &self.per_view {
            per_view
                .check_key(&self.bucket(view_id))
                .map_err(|n| self.limited("view", n))?;
        }
        Ok(())
    }

    /// Forgets buckets that are back at full capacity. Run periodically.
    pub fn housekeeping(&self) {
        for limiter in [&self.per_ip, &self.events_per_ip, &self.per_view]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Number of keyed buckets currently held (a gauge for /metrics).
    pub fn state_size(&self) -> usize {
        [&self.per_ip, &self.events_per_ip, &self.per_view]
            .into_iter()
            .flatten()
            .map(|l| l.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(
        per_ip: u32,
        per_view: u32,
        global: u32,
        burst_factor: u32,
        buckets: u64,
    ) -> RateLimits {
        RateLimits::new(RateConfig {
            per_ip,
            events_per_ip: 0,
            per_view,
            global,
            burst_factor,
            buckets,
            ipv6_prefix_len: 64,
        })
    }

    #[test]
    fn a_client_refused_by_its_own_limit_leaves_the_global_budget_alone() {
        let limits = make(1, 0, 3, 1, 1024);
        let greedy: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.check_client(greedy).is_ok());
        for _ in 0..50 {
            assert_eq!(limits.check_client(greedy).unwrap_err().scope, "client");
        }
        for other in ["192.0.2.2", "192.0.2.3"] {
            assert!(
                limits.check_client(other.parse().unwrap()).is_ok(),
                "{other}"
            );
        }
    }

    #[test]
    fn events_are_limited_per_client() {
        let limits = RateLimits::new(RateConfig {
            per_ip: 0,
            events_per_ip: 100,
            per_view: 0,
            global: 0,
            burst_factor: 1,
            buckets: 1024,
            ipv6_prefix_len: 64,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.check_client_events(ip, 60).is_ok());
        assert!(limits.check_client_events(ip, 40).is_ok());
        assert_eq!(
            limits.check_client_events(ip, 1).unwrap_err().scope,
            "client_events"
        );
        // More than the whole allowance at once is refused outright.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limits.check_client_events(other, 101).is_err());
        assert!(limits.check_client_events(other, 0).is_ok());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb:cccc:dddd:eeee".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(c, 64));
        assert_ne!(client_key(a, 128), client_key(b, 128));
        assert_eq!(client_key(c, 48), client_key(a, 48));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            client_key(mapped, 64),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let limits = make(1, 0, 0, 1, 1024);
        assert!(limits.check_client(a).is_ok());
        assert!(limits.check_client(b).is_err(), "same /64, same budget");
        assert!(limits.check_client(c).is_ok());
    }

    #[test]
    fn per_client_limit_and_retry_after() {
        let limits = make(2, 0, 0, 1, 1024);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.check_client(ip).is_ok());
        assert!(limits.check_client(ip).is_ok());
        let hit = limits.check_client(ip).unwrap_err();
        assert_eq!(hit.scope, "client");
        assert!(hit.retry_after > Duration::ZERO && hit.retry_after <= Duration::from_secs(1));
        // Another client has its own budget.
        assert!(limits.check_client("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn state_is_bounded_by_buckets() {
        let limits = make(1000, 1000, 0, 1, 64);
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = limits.check_client(ip);
            let _ = limits.check_view(&format!("view-{i}"));
        }
        assert!(limits.state_size() <= 128, "{}", limits.state_size());
    }

    #[test]
    fn global_ceiling_and_disabled_limits() {
        let limits = make(0, 0, 1, 1, 16);
        assert!(limits.check_client("192.0.2.1".parse().unwrap()).is_ok());
        assert_eq!(
            limits
                .check_client("192.0.2.9".parse().unwrap())
                .unwrap_err()
                .scope,
            "global"
        );
        let open = make(0, 0, 0, 1, 16);
        for _ in 0..1000 {
            assert!(open.check_view("v").is_ok());
        }
    }
}
