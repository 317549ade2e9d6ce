//! A TCP proxy in front of a real server that a test can cut and restore,
//! to see what a service does while its MongoDB or Redis is unreachable.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    address: SocketAddr,
    scheme: Scheme,
    down: Arc<AtomicBool>,
    /// Bumped on every cut, so live connections close.
    generation: watch::Sender<u64>,
    stop: CancellationToken,
}

#[derive(Clone, Copy)]
enum Scheme {
    Mongo,
    Redis,
}

impl TcpProxy {
    /// A proxy in front of the tests' MongoDB.
    pub async fn in_front_of_mongo() -> Self {
        let target = crate::host_port(&crate::servers().await.mongo_url);
        Self::start(&target, Scheme::Mongo).await
    }

    /// A proxy in front of the tests' Redis.
    pub async fn in_front_of_redis() -> Self {
        let target = crate::host_port(&crate::servers().await.redis_url);
        Self::start(&target, Scheme::Redis).await
    }

    /// The connection URL that goes through the proxy.
    pub fn url(&self) -> String {
        match self.scheme {
            Scheme::Mongo => format!("mongodb://{}/?directConnection=true", self.address),
            Scheme::Redis => format!("redis://{}", self.address),
        }
    }

    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    async fn start(target: &str, scheme: Scheme) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let down = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let target = target.to_owned();
        {
            let down = down.clone();
            let generation = generation.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((mut client, _)) = accepted else {
                        continue;
                    };
                    if down.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut cut = generation.subscribe();
                    let target = target.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            });
        }
        Self {
            address,
            scheme,
            down,
            generation,
            stop,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops every live connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
