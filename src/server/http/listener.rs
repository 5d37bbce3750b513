//! A bound HTTP listener on the runtime every listener shares: it accepts from the moment
//! it binds, takes requests once the model is loaded, and stops at shutdown.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock, RwLock};
use std::thread;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{accept, ApiKey, Front, Limits, Serving};
use crate::error::TransportError;
use crate::server::metrics::{HttpConnections, Listener};
use crate::server::queue::Job;
use crate::server::Shared;

/// After the shutdown signal a listener answers for this long (health 503, new requests
/// `shutting_down`), then stops accepting.
const STOP_GRACE: Duration = Duration::from_millis(200);

/// A bound HTTP listener, answering from the moment it binds (before the model loads, so that
/// probes hear "loading").
pub struct HttpListener {
    front: Arc<Front>,
    task: JoinHandle<()>,
    pub addr: String,
    /// The connection metrics every listener shares (registered when the server starts).
    pub connections: HttpConnections,
}

/// The runtime of every HTTP listener: two worker threads (the work is the engine's).
fn runtime() -> std::io::Result<&'static Runtime> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("http").enable_all().build()?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

impl HttpListener {
    /// Bind `addr` (loopback only unless `any_address`) and start accepting under `limits`;
    /// with `api_key`, every route but `/health` needs it.
    pub fn bind(
        addr: &str,
        any_address: bool,
        limits: Limits,
        api_key: Option<ApiKey>,
        connections: &HttpConnections,
    ) -> Result<Self, TransportError> {
        let bind = |source| TransportError::Bind { what: format!("http {addr}"), source };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(bind)?.collect();
        if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback() && !any_address) {
            return Err(TransportError::NotLoopback { addr: *remote, flag: "--http-any-address" });
        }
        let std_listener = std::net::TcpListener::bind(&addrs[..]).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let runtime = runtime().map_err(bind)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind)?
        };
        let label = Listener { listener: addr.to_string() };
        let front = Arc::new(Front {
            limits,
            serving: RwLock::new(None),
            stop: watch::Sender::new(false),
            awaiting: AtomicUsize::new(0),
            api_key,
            open: connections.open.get_or_create(&label).clone(),
            refused: connections.refused.get_or_create(&label).clone(),
        });
        let task = runtime.spawn(accept::accept_loop(listener, Arc::clone(&front)));
        Ok(Self { front, task, addr: addr.to_string(), connections: connections.clone() })
    }

    /// Take generate requests from now on (until now, every request was answered `loading`).
    pub fn open(&self, shared: &Arc<Shared>, jobs: &SyncSender<Job>) {
        self.front.set_serving(Some(Serving { shared: Arc::clone(shared), jobs: jobs.clone() }));
    }

    /// Serve until shutdown, then stop accepting, let the answers in the making go out (a short
    /// grace for those nobody reads) and return.
    pub fn serve(self, shared: &Shared) {
        while !shared.stopping_for(STOP_GRACE) {
            thread::sleep(Duration::from_millis(20));
        }
        self.front.stop.send_replace(true);
        if let Ok(runtime) = runtime() {
            if let Err(e) = runtime.block_on(self.task) {
                log::error!("the HTTP listener {} failed: {e}", self.addr);
            }
        }
        self.front.set_serving(None); // and its queue sender with it
    }
}
