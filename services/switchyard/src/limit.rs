//! Request-rate limits per provider (governor). A call waits for its provider's limiter before
//! it is sent, so a stage never sends more than the configured requests per minute, whatever
//! the demand. The burst is one second's worth, so no 60 s window sees more than about
//! rpm × (1 + 1/60) requests.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Provider;

/// Limiters by provider name; providers without `rpm` are not limited.
#[derive(Debug, Default)]
pub struct Limits {
    by_provider: HashMap<String, Arc<DefaultDirectRateLimiter>>,
}

/// The quota for `rpm` requests per minute with a one-second burst.
pub fn quota(rpm: NonZeroU32) -> Quota {
    let burst = NonZeroU32::new(rpm.get() / 60).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(rpm).allow_burst(burst)
}

impl Limits {
    /// One limiter per provider that has an `rpm`.
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a Provider>) -> Self {
        let by_provider = providers
            .into_iter()
            .filter_map(|p| {
                let rpm = NonZeroU32::new(p.rpm?)?;
                Some((p.name.clone(), Arc::new(RateLimiter::direct(quota(rpm)))))
            })
            .collect();
        Self { by_provider }
    }

    /// Waits until `provider` may be sent one more request.
    pub async fn until_ready(&self, provider: &str) {
        if let Some(l) = self.by_provider.get(provider) {
            l.until_ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_one_second_of_the_rate() {
        let rpm = NonZeroU32::new(600).unwrap();
        let l = RateLimiter::direct(quota(rpm));
        let admitted = (0..100).filter(|_| l.check().is_ok()).count();
        assert_eq!(admitted, 10);
        let slow = RateLimiter::direct(quota(NonZeroU32::new(30).unwrap()));
        assert_eq!((0..10).filter(|_| slow.check().is_ok()).count(), 1);
    }
}
