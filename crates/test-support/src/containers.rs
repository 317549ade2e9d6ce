//! MongoDB and Redis in containers, for machines with a Docker engine and
//! no servers configured. The containers live as long as the test binary
//! (testcontainers' reaper removes them afterwards).

use testcontainers::{
    core::{IntoContainerPort, WaitFor},
    runners::AsyncRunner,
    ContainerAsync, GenericImage,
};

use crate::Servers;

static KEEP: std::sync::Mutex<Vec<ContainerAsync<GenericImage>>> =
    std::sync::Mutex::new(Vec::new());

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

/// Starts a container for each server without a configured URL.
pub(crate) async fn start(mongo: Option<String>, redis: Option<String>) -> Servers {
    assert!(
        docker_available(),
        "no servers configured: set MONGO_URL and REDIS_URL (scripts/test.sh starts \
         FerretDB and Redis and sets them), or run with a Docker engine for testcontainers"
    );
    let mongo_url = match mongo {
        Some(url) => url,
        None => {
            let container = GenericImage::new("mongo", "7")
                .with_exposed_port(27017.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Waiting for connections"))
                .start()
                .await
                .expect("cannot start a MongoDB container");
            let port = container
                .get_host_port_ipv4(27017)
                .await
                .expect("MongoDB port");
            KEEP.lock().expect("container list").push(container);
            format!("mongodb://127.0.0.1:{port}")
        }
    };
    let redis_url = match redis {
        Some(url) => url,
        None => {
            let container = GenericImage::new("redis", "7")
                .with_exposed_port(6379.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                .start()
                .await
                .expect("cannot start a Redis container");
            let port = container
                .get_host_port_ipv4(6379)
                .await
                .expect("Redis port");
            KEEP.lock().expect("container list").push(container);
            format!("redis://127.0.0.1:{port}")
        }
    };
    Servers {
        mongo_url,
        redis_url,
    }
}
