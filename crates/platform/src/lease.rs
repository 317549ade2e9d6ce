//! A lease in Redis: a key holding the id of the one process that may do
//! some work, with an expiry, so that a holder that dies frees it by itself.
//! Holding is renewing: a holder calls `hold` again before the expiry.

use std::time::Duration;

use redis::aio::ConnectionLike;

/// Takes the lease when it is free, or renews it when this holder holds
/// it; answers 1 when this holder holds it afterwards.
const HOLD: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Gives the lease up if this holder holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// The lease `key`, held by `holder` (unique per process) for `ttl` at
    /// a time.
    pub fn new(key: String, holder: String, ttl: Duration) -> Self {
        Self { key, holder, ttl }
    }

    /// Takes the lease when it is free or renews it when this holder holds
    /// it; whether this holder holds it now.
    pub async fn hold(&self, redis: &mut impl ConnectionLike) -> redis::RedisResult<bool> {
        let held: i64 = redis::cmd("EVAL")
            .arg(HOLD)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .arg(self.ttl.as_millis() as u64)
            .query_async(redis)
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up, so that another process need not wait for it to
    /// expire; a failure is harmless (it expires by itself).
    pub async fn release(&self, redis: &mut impl ConnectionLike) {
        let released: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .query_async(redis)
            .await;
        if let Err(error) = released {
            tracing::debug!(%error, key = %self.key, "could not release a lease; it expires by itself");
        }
    }
}
