//! Rate limiting with `governor`: per client address, per view, and a global ceiling.
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
    per_view: Option<Keyed>,
    global: Option<Direct>,
    buckets: u64,
    seed: RandomState,
    clock: DefaultClock,
}

fn quota(per_second: u32, burst_factor: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(burst_factor.max(1))).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    /// Rates are requests per second; 0 disables that limit.
    pub fn new(per_ip: u32, per_view: u32, global: u32, burst_factor: u32, buckets: u64) -> Self {
        RateLimits {
            per_ip: quota(per_ip, burst_factor).map(RateLimiter::keyed),
            per_view: quota(per_view, burst_factor).map(RateLimiter::keyed),
            global: quota(global, burst_factor).map(RateLimiter::direct),
            buckets: buckets.max(1),
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

    /// Global ceiling and per-address limit, checked before the body is read.
    pub fn check_client(&self, ip: IpAddr) -> Result<(), Limited> {
        if let Some(global) = &self.global {
            global.check().map_err(|n| self.limited("global", n))?;
        }
        if let Some(per_ip) = &self.per_ip {
            per_ip
                .check_key(&self.bucket(ip))
                .map_err(|n| self.limited("client", n))?;
        }
        Ok(())
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
        for limiter in [&self.per_ip, &self.per_view].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Number of keyed buckets currently held (a gauge for /metrics).
    pub fn state_size(&self) -> usize {
        [&self.per_ip, &self.per_view]
            .into_iter()
            .flatten()
            .map(|l| l.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_limit_and_retry_after() {
        let limits = RateLimits::new(2, 0, 0, 1, 1024);
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
        let limits = RateLimits::new(1000, 1000, 0, 1, 64);
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = limits.check_client(ip);
            let _ = limits.check_view(&format!("view-{i}"));
        }
        assert!(limits.state_size() <= 128, "{}", limits.state_size());
    }

    #[test]
    fn global_ceiling_and_disabled_limits() {
        let limits = RateLimits::new(0, 0, 1, 1, 16);
        assert!(limits.check_client("192.0.2.1".parse().unwrap()).is_ok());
        assert_eq!(
            limits
                .check_client("192.0.2.9".parse().unwrap())
                .unwrap_err()
                .scope,
            "global"
        );
        let open = RateLimits::new(0, 0, 0, 1, 16);
        for _ in 0..1000 {
            assert!(open.check_view("v").is_ok());
        }
    }
}
