//! A TCP proxy in front of a real server that a test can cut and restore,
//! to see what a service does while its MongoDB or Redis is unreachable.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
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
    /// A connection that sends a request holding these bytes gets no reply
    /// from then on (see `swallow_replies_to`).
    swallowed_request: Arc<Mutex<Option<Vec<u8>>>>,
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
        let swallowed_request = Arc::new(Mutex::new(None));
        let (generation, _) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let target = target.to_owned();
        {
            let down = down.clone();
            let hung = hung.clone();
            let swallowed_request = swallowed_request.clone();
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
                    let swallowing = Swallowing {
                        request: swallowed_request.clone(),
                        silent: AtomicBool::new(false),
                    };
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let (from_client, to_client) = client.into_split();
                        let (from_server, to_server) = server.into_split();
                        tokio::select! {
                            () = pump(from_client, to_server, up_hung, Direction::Request(&swallowing)) => {}
                            () = pump(from_server, to_client, down_hung, Direction::Reply(&swallowing)) => {}
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
            swallowed_request,
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

    /// From now until `restore`, a connection that sends a request naming
    /// `command` (say `findAndModify`) gets no reply again, while it stays
    /// open and others are answered: a server that takes requests and never
    /// answers them.
    pub fn swallow_replies_to(&self, command: &str) {
        *self.swallowed_request.lock().expect("not poisoned") = Some(command.as_bytes().to_vec());
    }

    /// Accepts and forwards connections again (those left without replies
    /// stay so: what they were owed is lost).
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.hung.send_replace(false);
        *self.swallowed_request.lock().expect("not poisoned") = None;
    }
}

/// Whether one connection's replies are dropped.
struct Swallowing {
    request: Arc<Mutex<Option<Vec<u8>>>>,
    silent: AtomicBool,
}

enum Direction<'a> {
    Request(&'a Swallowing),
    Reply(&'a Swallowing),
}

/// Forwards what `from` sends to `to`, holding it while `hung`; a request
/// holding the swallowed bytes silences the connection's replies.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut hung: watch::Receiver<bool>,
    direction: Direction<'_>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if hung.wait_for(|hung| !*hung).await.is_err() {
            return;
        }
        match direction {
            Direction::Request(swallowing) => {
                let request = swallowing.request.lock().expect("not poisoned");
                if let Some(needle) = request.as_deref() {
                    if buffer[..read].windows(needle.len()).any(|w| w == needle) {
                        swallowing.silent.store(true, Ordering::SeqCst);
                    }
                }
            }
            Direction::Reply(swallowing) if swallowing.silent.load(Ordering::SeqCst) => continue,
            Direction::Reply(_) => {}
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
