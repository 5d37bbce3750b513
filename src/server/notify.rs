//! The systemd notify protocol over `$NOTIFY_SOCKET` (a no-op when it is unset):
//! EXTEND_TIMEOUT_USEC while the model loads (TensorRT engine builds take minutes on an Orin,
//! beyond systemd's default start timeout) and STATUS= naming the graph it opens ([`status`]),
//! READY=1 once the sessions are built and warmed up, WATCHDOG=1 while the inference thread is
//! alive and not stuck, STOPPING=1 on shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sd_notify::NotifyState;

use super::Shared;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("systemd notify failed: {e}");
    }
}

/// How much more start time each EXTEND_TIMEOUT_USEC asks for; sent every third of it.
const EXTEND: Duration = Duration::from_secs(90);
/// The longest loading extended: a load hung for longer is left to systemd's timeout.
const MAX_LOADING: Duration = Duration::from_secs(30 * 60);

/// Until `loaded` is set (or for `MAX_LOADING`), ask systemd for `EXTEND` more start time now
/// (with STATUS=loading the model) and every `EXTEND` / 3 (leaving the status to [`status`]).
/// Join the handle before READY=1, so that no extension follows it.
pub fn extend_while_loading(loaded: Arc<AtomicBool>) -> Option<JoinHandle<()>> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let usec = u32::try_from(EXTEND.as_micros()).unwrap_or(u32::MAX);
    // the first one here, before any status of the loading can follow it
    send(&[NotifyState::ExtendTimeoutUsec(usec), NotifyState::Status("loading the model")]);
    let run = move || {
        let tick = Duration::from_millis(20);
        let (mut since, started) = (Duration::ZERO, std::time::Instant::now());
        while !loaded.load(Ordering::SeqCst) && started.elapsed() < MAX_LOADING {
            if since >= EXTEND / 3 {
                send(&[NotifyState::ExtendTimeoutUsec(usec)]);
                since = Duration::ZERO;
            }
            thread::sleep(tick);
            since += tick;
        }
    };
    thread::Builder::new().name("notify-loading".into()).spawn(run).ok()
}

/// STATUS=`text` (what `systemctl status` shows), e.g. the graph being loaded; a control
/// character (a newline in a graph's name would start another assignment) as a space.
pub fn status(text: &str) {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    send(&[NotifyState::Status(&text)]);
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// With `WATCHDOG_USEC` set, ping at half the interval while the engine is healthy: alive, and
/// not on one request for longer than its deadline allows plus an interval.
pub fn start_watchdog(shared: Arc<Shared>) -> Option<JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let stuck_after = shared.config.timeout + interval;
    let run = move || {
        while !shared.shutdown.load(Ordering::SeqCst) || shared.engine_alive.load(Ordering::SeqCst) {
            let busy = *shared.busy_since.lock().unwrap_or_else(|e| e.into_inner());
            let stuck = busy.is_some_and(|since| since.elapsed() > stuck_after);
            if shared.engine_alive.load(Ordering::SeqCst) && !stuck {
                send(&[NotifyState::Watchdog]);
            } else {
                log::error!("inference thread dead or stuck: withholding the watchdog ping");
            }
            sleep_unless_stopped(&shared, interval / 2);
        }
    };
    thread::Builder::new().name("watchdog".into()).spawn(run).ok()
}

fn sleep_unless_stopped(shared: &Shared, total: Duration) {
    let tick = Duration::from_millis(20);
    let mut slept = Duration::ZERO;
    while slept < total && (!shared.shutdown.load(Ordering::SeqCst) || shared.engine_alive.load(Ordering::SeqCst)) {
        thread::sleep(tick);
        slept += tick;
    }
}
