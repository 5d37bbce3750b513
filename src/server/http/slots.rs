//! The connection slots of one listener. A connection is busy from the moment its request is
//! read whole until its answer is handed to hyper, and otherwise waiting: for its next request,
//! or for the rest of a head or body a slow client drips. When every slot is taken, a new
//! connection takes the slot of the one that has waited longest, if that is at least
//! [`MIN_WAIT`] (so a few clients dripping bytes cannot hold every slot until their timeouts);
//! with none such it is refused.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use super::events::Payload;

/// How long a connection must have waited for its request before a new one may take its slot.
const MIN_WAIT: Duration = Duration::from_secs(1);

pub(super) struct Slot {
    busy: AtomicBool,
    /// When it last began waiting (opened, or handed an answer over).
    since: Mutex<Instant>,
    /// Told when a new connection takes this slot.
    pub(super) evicted: Notify,
}

impl Slot {
    /// Its request is read whole: until the answer goes out, no new connection may take it.
    pub(super) fn busy(&self) {
        self.busy.store(true, Ordering::SeqCst);
    }

    fn waiting(&self) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.busy.store(false, Ordering::SeqCst);
    }

    fn waited(&self) -> Option<Duration> {
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        (!self.busy.load(Ordering::SeqCst)).then(|| since.elapsed())
    }
}

pub(super) struct Slots {
    max: usize,
    taken: Mutex<Vec<Arc<Slot>>>,
}

impl Slots {
    pub(super) fn new(max: usize) -> Self {
        Self { max, taken: Mutex::new(Vec::new()) }
    }

    /// A slot for a new connection: a free one, or the one of the connection that has waited
    /// longest (at least [`MIN_WAIT`]), which is told to close. None: refuse it.
    pub(super) fn take(self: &Arc<Self>) -> Option<Held> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.len() >= self.max {
            let longest = taken
                .iter()
                .enumerate()
                .filter_map(|(i, slot)| slot.waited().filter(|w| *w >= MIN_WAIT).map(|w| (w, i)))
                .max()?;
            let victim = taken.swap_remove(longest.1);
            log::info!("HTTP: {} connections open; closing one that waited {:?} for its request", self.max, longest.0);
            victim.evicted.notify_one();
        }
        let slot =
            Arc::new(Slot { busy: AtomicBool::new(false), since: Mutex::new(Instant::now()), evicted: Notify::new() });
        taken.push(Arc::clone(&slot));
        Some(Held { slots: Arc::clone(self), slot })
    }
}

/// A connection's slot, given back when dropped (unless a new connection took it already).
pub(super) struct Held {
    slots: Arc<Slots>,
    pub(super) slot: Arc<Slot>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

/// An answer's body: once hyper is done with it, its connection waits again.
pub(super) struct AnswerBody {
    body: Payload,
    slot: Arc<Slot>,
}

impl AnswerBody {
    pub(super) fn new(body: Payload, slot: Arc<Slot>) -> Self {
        Self { body, slot }
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        self.slot.waiting();
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    /// Either's; neither of its bodies fails.
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
