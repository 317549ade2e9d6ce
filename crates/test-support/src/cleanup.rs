//! Removes what a test created on the shared servers, so that repeated test
//! runs on a development machine do not pile up databases and streams.

/// Drops the named MongoDB databases and deletes the named Redis keys when
/// dropped, also when the test panicked.
pub struct Cleanup {
    databases: Vec<String>,
    keys: Vec<String>,
}

impl Cleanup {
    pub fn new(databases: Vec<String>, keys: Vec<String>) -> Self {
        Self { databases, keys }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let databases = std::mem::take(&mut self.databases);
        let keys = std::mem::take(&mut self.keys);
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
                    }
                }
            });
        });
        let _ = worker.join();
    }
}
