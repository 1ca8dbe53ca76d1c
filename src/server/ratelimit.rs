//! Per-certificate token buckets: each client certificate may make `rate` requests a second
//! with bursts up to `burst`. Buckets of idle clients are dropped so the table stays small.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Most client buckets kept before idle ones are evicted.
const MAX_CLIENTS: usize = 100_000;

/// The limiter.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` tokens per second, bucket size `burst` (at least 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`; false when the client is over its limit.
    pub fn allow(&self, client: &str, now: Instant) -> bool {
        self.allow_share(client, now, 1)
    }

    /// Like [`RateLimiter::allow`] with the rate and burst divided among `replicas` brokers,
    /// so a client spreading over them gets no more in all. The rate is divided exactly (a
    /// replica may allow one request every few seconds); the burst is at least one request,
    /// or a replica could never allow any.
    pub fn allow_share(&self, client: &str, now: Instant, replicas: u32) -> bool {
        let share = f64::from(replicas.max(1));
        let (rate, burst) = (self.rate / share, (self.burst / share).max(1.0));
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(client) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(client.to_owned()).or_insert((burst, now));
        let refilled =
            (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            true
        } else {
            *tokens = refilled;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill_per_client() {
        let limiter = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        assert!(limiter.allow("a", t0));
        assert!(limiter.allow("a", t0));
        assert!(limiter.allow("a", t0));
        assert!(!limiter.allow("a", t0), "burst exhausted");
        assert!(limiter.allow("b", t0), "other clients are unaffected");
        assert!(
            limiter.allow("a", t0 + Duration::from_millis(110)),
            "refilled"
        );
        assert!(!limiter.allow("a", t0 + Duration::from_millis(111)));
    }

    #[test]
    fn replicas_share_a_limit_smaller_than_their_number() {
        // 1 request/s, burst 1, over 2 replicas: each allows one request every 2 s (after
        // its burst of one), so a client alternating between them gets about 1/s in all,
        // not 1/s from each.
        let limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        let allowed = (0..100)
            .filter(|i| limiter.allow_share("a", t0 + Duration::from_millis(100 * i), 2))
            .count();
        // 10 s on one replica's share: 1 + 0.5/s × 9.9 s.
        assert_eq!(allowed, 5);
    }
}
