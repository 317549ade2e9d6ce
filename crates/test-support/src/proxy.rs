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
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::watch,
};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    address: SocketAddr,
    scheme: Scheme,
    down: Arc<AtomicBool>,
    /// While true, nothing is forwarded either way: the server hangs.
    hung: watch::Sender<bool>,
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
        let (hung, _) = watch::channel(false);
        let (generation, _) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let target = target.to_owned();
        {
            let down = down.clone();
            let hung = hung.clone();
            let generation = generation.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((client, _)) = accepted else {
                        continue;
                    };
                    if down.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut cut = generation.subscribe();
                    let stop = stop.clone();
                    let target = target.clone();
                    let (up_hung, down_hung) = (hung.subscribe(), hung.subscribe());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let (from_client, to_client) = client.into_split();
                        let (from_server, to_server) = server.into_split();
                        tokio::select! {
                            () = pump(from_client, to_server, up_hung) => {}
                            () = pump(from_server, to_client, down_hung) => {}
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
            hung,
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

    /// Keeps every connection open, live ones included, and forwards
    /// nothing until `restore`: a server that hangs rather than goes away.
    pub fn hang(&self) {
        self.hung.send_replace(true);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.hung.send_replace(false);
    }
}

/// Forwards what `from` sends to `to`, holding it while `hung`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut hung: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if hung.wait_for(|hung| !*hung).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
