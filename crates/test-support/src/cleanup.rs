//! Removes what a test created on the shared servers, so that repeated test
//! runs on a development machine do not pile up databases, streams and
//! cache entries.

/// Keys deleted per SCAN step.
const SCAN_COUNT: usize = 500;

/// Drops the named MongoDB databases and deletes the named Redis keys, and
/// every key under the given prefixes, when dropped, also when the test
/// panicked.
pub struct Cleanup {
    databases: Vec<String>,
    keys: Vec<String>,
    key_prefixes: Vec<String>,
}

impl Cleanup {
    pub fn new(databases: Vec<String>, keys: Vec<String>) -> Self {
        Self {
            databases,
            keys,
            key_prefixes: Vec::new(),
        }
    }

    /// Also deletes every Redis key that starts with one of `prefixes`
    /// (found with SCAN, so a test's cache entries go too).
    pub fn with_key_prefixes(mut self, prefixes: Vec<String>) -> Self {
        self.key_prefixes.extend(prefixes);
        self
    }
}

/// `prefix` as a SCAN MATCH pattern that matches it literally, followed by
/// anything.
fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// Deletes every key that starts with `prefix`.
async fn delete_prefixed(
    connection: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> redis::RedisResult<()> {
    let pattern = prefix_pattern(prefix);
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(connection)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let databases = std::mem::take(&mut self.databases);
        let keys = std::mem::take(&mut self.keys);
        let key_prefixes = std::mem::take(&mut self.key_prefixes);
        let Some(servers) = crate::SERVERS.get().cloned() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // do the work on a thread of its own and wait for it.
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async {
                if let Ok(client) = mongodb::Client::with_uri_str(&servers.mongo_url).await {
                    for name in &databases {
                        let _ = client.database(name).drop().await;
                    }
                }
                if let Ok(client) = redis::Client::open(servers.redis_url.as_str()) {
                    if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                        for key in &keys {
                            let _: redis::RedisResult<()> = redis::cmd("DEL")
                                .arg(key)
                                .query_async(&mut connection)
                                .await;
                        }
                        for prefix in &key_prefixes {
                            let _ = delete_prefixed(&mut connection, prefix).await;
                        }
                    }
                }
            });
        });
        let _ = worker.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_pattern_matches_glob_characters_literally() {
        assert_eq!(prefix_pattern("books:cache:"), "books:cache:*");
        assert_eq!(prefix_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }
}
