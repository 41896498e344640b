//! Retries with exponential backoff: what one attempt at a provider came to ([`Outcome`]), and
//! the loop that repeats retryable attempts ([`with_retries`]).
//!
//! The delay before retry `n` is `initial_backoff * 2^(n-1)`, capped at `max_backoff`, and never
//! shorter than a `Retry-After` the provider sent. A provider that asks to wait longer than
//! `max_retry_after` is not waited for: the delivery fails now and ends in the dead letters
//! (a function invocation must not sleep for minutes).

use std::future::Future;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per delivery, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff: Duration,
    /// Longest delay between two attempts (a longer `Retry-After` still wins, up to
    /// `max_retry_after`).
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; longer ones fail the delivery at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 500 ms doubling to at most 8 s, `Retry-After` up to 30 s.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry `n` (1 = the first retry), before any `Retry-After`.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(20));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the notification.
    Delivered,
    /// The provider says the device token is no longer valid: forget it.
    InvalidToken(String),
    /// Worth another attempt, after at least `retry_after` when given.
    Retry {
        /// Why the attempt failed.
        reason: String,
        /// The provider's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Can never succeed as it is.
    Permanent(String),
}

impl Outcome {
    /// A retryable failure without `Retry-After`.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// How a delivery ended, after every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// Delivered.
    Delivered,
    /// The token is invalid (and should be removed).
    InvalidToken(String),
    /// Failed for good.
    Failed(String),
}

/// Runs `attempt(n)` (n from 1) until it is not [`Outcome::Retry`] or the policy gives up;
/// returns how it ended and the number of attempts made.
pub async fn with_retries<F, Fut>(policy: &RetryPolicy, mut attempt: F) -> (Final, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let max = policy.max_attempts.max(1);
    let mut n = 1;
    loop {
        match attempt(n).await {
            Outcome::Delivered => return (Final::Delivered, n),
            Outcome::InvalidToken(why) => return (Final::InvalidToken(why), n),
            Outcome::Permanent(why) => return (Final::Failed(why), n),
            Outcome::Retry {
                reason,
                retry_after,
            } => {
                if n >= max {
                    return (
                        Final::Failed(format!("{reason} (gave up after {n} attempts)")),
                        n,
                    );
                }
                if let Some(wait) = retry_after
                    && wait > policy.max_retry_after
                {
                    return (
                        Final::Failed(format!(
                            "{reason} (Retry-After {} s is longer than the {} s allowed)",
                            wait.as_secs(),
                            policy.max_retry_after.as_secs()
                        )),
                        n,
                    );
                }
                let delay = policy.backoff(n).max(retry_after.unwrap_or_default());
                tracing::info!(attempt = n, delay_ms = delay.as_millis() as u64, reason = %reason, "push attempt failed; retrying");
                tokio::time::sleep(delay).await;
                n += 1;
            }
        }
    }
}

/// The `Retry-After` of a response: delay-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// Whether an HTTP status is worth retrying: 408, 429 and 5xx.
pub fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// The outcome of a provider's answer when its status says it all (the webhook, Web Push): 2xx
/// is delivered, a status in `gone` means the token is no longer valid, 408/429/5xx are retried
/// (after `Retry-After` when given), anything else is permanent.
pub fn by_status(provider: &str, status: u16, headers: &HeaderMap, gone: &[u16]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let reason = format!("{provider}: {status}");
    if gone.contains(&status) {
        Outcome::InvalidToken(reason)
    } else if retryable_status(status) {
        Outcome::Retry {
            reason,
            retry_after: retry_after(headers),
        }
    } else {
        Outcome::Permanent(reason)
    }
}

/// The outcome of a transport error (no response): always worth a retry.
pub fn transport_error(provider: &str, e: &reqwest::Error) -> Outcome {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    Outcome::retry(format!("{provider}: {kind}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(5),
        };
        let delays: Vec<u64> = (1..=5).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        assert_eq!(p.backoff(1000), Duration::from_millis(500));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_retry_after: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn retries_until_success_or_the_last_attempt() {
        let calls = Mutex::new(0);
        let (end, n) = with_retries(&fast(5), |n| {
            *calls.lock().unwrap() += 1;
            async move {
                if n < 3 {
                    Outcome::retry("busy")
                } else {
                    Outcome::Delivered
                }
            }
        })
        .await;
        assert_eq!((end, n), (Final::Delivered, 3));
        let (end, n) = with_retries(&fast(2), |_| async { Outcome::retry("down") }).await;
        assert_eq!(n, 2);
        assert!(matches!(end, Final::Failed(why) if why.contains("after 2 attempts")));
        let (end, n) = with_retries(&fast(5), |_| async { Outcome::Permanent("bad".into()) }).await;
        assert_eq!((end, n), (Final::Failed("bad".into()), 1));
    }

    #[tokio::test]
    async fn retry_after_is_honoured_within_limits() {
        let started = std::time::Instant::now();
        let (end, _) = with_retries(&fast(3), |n| async move {
            if n == 1 {
                Outcome::Retry {
                    reason: "429".into(),
                    retry_after: Some(Duration::from_millis(300)),
                }
            } else {
                Outcome::Delivered
            }
        })
        .await;
        assert_eq!(end, Final::Delivered);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let (end, n) = with_retries(&fast(3), |_| async {
            Outcome::Retry {
                reason: "429".into(),
                retry_after: Some(Duration::from_secs(3600)),
            }
        })
        .await;
        assert_eq!(n, 1);
        assert!(matches!(end, Final::Failed(why) if why.contains("Retry-After")));
    }
}
