//! The inference thread: it alone owns the model, and runs the engine's loop
//! ([`crate::engine`]) on the jobs of the server's queue. Here is what is the server's: a job
//! leaves the queue (its depth counted down), is refused while the server drains past its drain
//! time or when its parameters are invalid, is answered with its response line or a typed
//! rejection, and is counted (metrics, `served`) as it is answered or its client leaves; the
//! health gauges (busy, active sequences, engine alive) follow the loop.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use super::queue::{Answer, Job};
use super::requests::{ok_line, to_request};
use super::Shared;
use crate::engine::{self, BatchFailure, Done, Failure, Jobs, Next, Step};
use crate::error::{chain, GenerateError};
use crate::generate::Request;
use crate::model::Model;
use crate::protocol::{ErrorCode, Rejection};

pub use crate::engine::POOL;

#[cfg(test)]
mod tests;

/// Serve jobs until every sender is gone and every admitted request is answered. Marks the
/// engine dead when it returns or unwinds.
pub fn run(mut model: Model, jobs: Receiver<Job>, shared: &Shared) {
    struct Alive<'a>(&'a Shared);
    impl Drop for Alive<'_> {
        fn drop(&mut self) {
            self.0.engine_alive.store(false, Ordering::SeqCst);
            self.0.active_sequences.store(0, Ordering::SeqCst);
        }
    }
    let _alive = Alive(shared);
    let mut queue = Queue { jobs, shared };
    engine::run(&mut model, &mut queue, shared.config.max_batch, shared.config.schedule);
}

/// The server's queue as the engine's source of jobs.
struct Queue<'s> {
    jobs: Receiver<Job>,
    shared: &'s Shared,
}

impl Queue<'_> {
    /// Answer `job` with a rejection, counted in the metrics and, once it was admitted (`served`),
    /// in `served` (a job refused as it leaves the queue is not).
    fn reject(&self, job: Job, code: ErrorCode, message: String, served: bool) {
        self.shared.metrics.answered(code.as_str());
        if served {
            self.shared.served.fetch_add(1, Ordering::Relaxed);
        }
        job.reply.send(Rejection::new(job.id.clone(), code, message).into());
    }
}

impl Jobs for Queue<'_> {
    type Job = Job;

    fn next(&mut self, wait: bool) -> Next<Job> {
        let job = if wait {
            match self.jobs.recv() {
                Ok(job) => job,
                Err(_) => return Next::Closed,
            }
        } else {
            match self.jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => return Next::Empty,
                Err(TryRecvError::Disconnected) => return Next::Closed,
            }
        };
        self.shared.queue_depth.fetch_sub(1, Ordering::SeqCst);
        Next::Job(job)
    }

    /// Refused at once: the drain time is over, or invalid parameters.
    fn take(&mut self, job: Job, model: &Model) -> Option<(Job, Request)> {
        if self.shared.drain_expired() {
            let message = "the server is stopping; this request was not started".into();
            self.reject(job, ErrorCode::ShuttingDown, message, false);
            return None;
        }
        match to_request(&job.params, self.shared, model, job.received) {
            Ok(request) => Some((job, request)),
            Err(e) => {
                self.reject(job, ErrorCode::InvalidArgument, e.to_string(), false);
                None
            }
        }
    }

    fn gone(&self, job: &Job) -> bool {
        job.reply.client_gone()
    }

    fn left(&mut self, _job: Job) {
        log::info!("a client left: its request's sequences leave the batch");
        self.shared.served.fetch_add(1, Ordering::Relaxed);
    }

    fn progress(&mut self, job: &Job, step: &Step<'_>) {
        let (id, texts) = (&job.id, step.texts);
        let event = serde_json::json!({"id": id, "event": "step", "step": step.step, "of": step.of, "t": step.t, "texts": texts});
        job.reply.progress(event.to_string());
    }

    fn done(&mut self, job: Job, done: Done<'_>) {
        let started = done.started.unwrap_or(job.received);
        let line = ok_line(&job.id, &done.outputs, &done.timing, done.request, (job.received, started));
        // counted before the answer goes out: a client reading the metrics next sees its request
        let metrics = &self.shared.metrics;
        metrics.answered("ok");
        metrics.timed(started.duration_since(job.received), started.elapsed(), &done.timing, done.request.steps);
        self.shared.served.fetch_add(1, Ordering::Relaxed);
        job.reply.send(Answer::ok(line));
    }

    fn failed(&mut self, job: Job, failure: Failure) {
        let (code, message, served) = match failure {
            Failure::Invalid(e) => (ErrorCode::InvalidArgument, e.to_string(), false),
            Failure::ExpiredInQueue => {
                let waited = job.received.elapsed().as_millis();
                (ErrorCode::Timeout, format!("deadline passed after {waited} ms in the queue"), false)
            }
            Failure::ExpiredBeforeStart => {
                (ErrorCode::Timeout, "deadline passed before the request's sequences could start".into(), true)
            }
            Failure::Failed(e @ GenerateError::Deadline { .. }) => (ErrorCode::Timeout, e.to_string(), true),
            Failure::Failed(e) => (ErrorCode::Internal, chain(&e), true),
        };
        self.reject(job, code, message, served);
    }

    fn batch_failed(&mut self, jobs: Vec<Job>, failure: BatchFailure) {
        let message = match failure {
            BatchFailure::Error(e) => chain(&e),
            BatchFailure::Panic(_) => "the inference thread panicked on this batch (a bug: please report it)".into(),
        };
        log::error!("the batch failed: {message}");
        for job in jobs {
            self.reject(job, ErrorCode::Internal, message.clone(), true);
        }
    }

    fn busy(&mut self, busy: bool) {
        *self.shared.busy_since.lock().unwrap_or_else(|e| e.into_inner()) = busy.then(Instant::now);
    }

    fn sequences(&mut self, n: usize) {
        self.shared.active_sequences.store(n, Ordering::SeqCst);
    }
}
