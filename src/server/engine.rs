//! The inference thread: it alone owns the ONNX Runtime sessions. It schedules per iteration:
//! the sequences of admitted requests share each denoiser call (each at its own step; at most
//! `max_batch`, those that would finish first), finished ones leave, and queued requests join
//! while fewer than [`POOL`] x `max_batch` sequences are admitted. A request has at most
//! `max_batch` sequences admitted at once (the rest join as its earlier ones finish), so a large
//! one never fills the pool: another client's short request joins at once and passes it. A
//! request whose client left leaves the batch at the next iteration. Every job is answered
//! exactly once.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use super::queue::{Answer, Job};
use super::requests::{ok_line, to_request};
use super::{Schedule, Shared};
use crate::error::{chain, GenerateError};
use crate::generate::{choose, course, lane, Generated, Request};
use crate::model::Model;
use crate::protocol::{ErrorCode, Rejection};
use crate::rerank::LanguageModel;
use crate::sampler::{Batch, Course, Timing};

/// Sequences admitted per sequence stepped at once: room for short requests to pass long ones.
pub const POOL: usize = 4;

/// An admitted request: its sequences run (or wait for room) in the batch.
struct Active {
    job: Job,
    request: Request,
    course: Arc<Course>,
    /// Samples to draw (num x mbr or rerank) and the next one to admit.
    total: usize,
    next: usize,
    /// Its sequences in the batch now (at most `max_batch`).
    running: usize,
    samples: Vec<Option<Generated>>,
    /// When its first sequence joined the batch.
    started: Option<Instant>,
}

struct Engine<'s> {
    shared: &'s Shared,
    model: Model,
    batch: Batch,
    /// By admission order: the first with sequences waiting and under its share gets the next
    /// free places.
    active: BTreeMap<u64, Active>,
    next_owner: u64,
}

/// Serve jobs until every sender is gone and every admitted request is answered. Marks the
/// engine dead when it returns or unwinds.
pub fn run(model: Model, jobs: Receiver<Job>, shared: &Shared) {
    struct Alive<'a>(&'a Shared);
    impl Drop for Alive<'_> {
        fn drop(&mut self) {
            self.0.engine_alive.store(false, Ordering::SeqCst);
            self.0.active_sequences.store(0, Ordering::SeqCst);
        }
    }
    let _alive = Alive(shared);
    let batch = Batch::with_limit(shared.config.max_batch.max(1));
    let mut engine = Engine { shared, model, batch, active: BTreeMap::new(), next_owner: 0 };
    let mut senders_gone = false;
    loop {
        senders_gone |= engine.admit(&jobs);
        if engine.batch.is_empty() {
            if senders_gone && engine.active.is_empty() {
                return;
            }
            continue;
        }
        engine.drop_gone_clients();
        engine.iterate();
        shared.active_sequences.store(engine.batch.len(), Ordering::SeqCst);
    }
}

impl Engine<'_> {
    /// Fill free places (up to [`POOL`] x `--max-batch` sequences; each iteration steps the
    /// `--max-batch` that would finish first): first the remaining sequences of admitted
    /// requests, each up to its share of `--max-batch`, then new jobs (blocking only when nothing
    /// runs). FIFO takes a new job only when none is active. Returns true once every sender is gone.
    fn admit(&mut self, jobs: &Receiver<Job>) -> bool {
        let share = self.shared.config.max_batch.max(1);
        let pool = POOL * share;
        loop {
            while self.batch.len() < pool {
                let waiting = self.active.iter_mut().find(|(_, a)| a.next < a.total && a.running < share);
                let Some((&owner, waiting)) = waiting else { break };
                if waiting.course.expired(Instant::now()) {
                    self.fail(
                        owner,
                        ErrorCode::Timeout,
                        "deadline passed before the request's sequences could start".into(),
                    );
                    continue;
                }
                waiting.started.get_or_insert_with(Instant::now);
                let l = lane(&self.model, owner, &waiting.course, waiting.request.seed, waiting.next);
                waiting.next += 1;
                waiting.running += 1;
                self.batch.push(l);
            }
            let fifo_busy = self.shared.config.schedule == Schedule::Fifo && !self.active.is_empty();
            if self.batch.len() >= pool || fifo_busy {
                return false;
            }
            let job = if self.active.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return true,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => return false,
                    Err(TryRecvError::Disconnected) => return true,
                }
            };
            self.shared.queue_depth.fetch_sub(1, Ordering::SeqCst);
            self.start(job);
        }
    }

    /// A job leaves the queue: answered at once (draining, invalid, expired) or admitted.
    fn start(&mut self, job: Job) {
        let fail = |code: ErrorCode, message: String| {
            self.shared.metrics.answered(code.as_str());
            Answer::from(Rejection::new(job.id.clone(), code, message))
        };
        if self.shared.drain_expired() {
            job.reply
                .send(fail(ErrorCode::ShuttingDown, "the server is stopping; this request was not started".into()));
            return;
        }
        let checked = to_request(&job.params, self.shared, &self.model, job.received)
            .and_then(|request| Ok((course(&self.model, &request)?, request)));
        let (course, request) = match checked {
            Ok(c) => c,
            Err(e) => {
                job.reply.send(fail(ErrorCode::InvalidArgument, e.to_string()));
                return;
            }
        };
        if course.expired(Instant::now()) {
            let waited = job.received.elapsed().as_millis();
            job.reply.send(fail(ErrorCode::Timeout, format!("deadline passed after {waited} ms in the queue")));
            return;
        }
        let total = request.num * request.samples_per_output();
        let owner = self.next_owner;
        self.next_owner += 1;
        let active = Active {
            job,
            request,
            course: Arc::new(course),
            total,
            next: 0,
            running: 0,
            samples: vec![None; total],
            started: None,
        };
        self.active.insert(owner, active);
    }

    /// Requests whose client is gone leave the batch unanswered.
    fn drop_gone_clients(&mut self) {
        let gone: Vec<u64> = self.active.iter().filter(|(_, a)| a.job.reply.client_gone()).map(|(&o, _)| o).collect();
        for owner in gone {
            log::info!("a client left: its request's sequences leave the batch");
            self.batch.remove_owner(owner);
            self.active.remove(&owner);
            self.shared.served.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn iterate(&mut self) {
        *self.shared.busy_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let (batch, model) = (&mut self.batch, &mut self.model);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let (denoiser, mut guides, embeddings) = model.engines();
            batch.iterate(denoiser, &mut guides, embeddings)
        }));
        *self.shared.busy_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let finished = match result {
            Ok(Ok(finished)) => finished,
            Ok(Err(e)) => return self.fail_all(ErrorCode::Internal, chain(&e)),
            Err(_) => {
                let why = "the inference thread panicked on this batch (a bug: please report it)";
                return self.fail_all(ErrorCode::Internal, why.into());
            }
        };
        for f in finished {
            let owner = f.lane.owner;
            let Some(active) = self.active.get_mut(&owner) else { continue };
            active.running -= 1;
            match f.result {
                Ok(sampled) => {
                    active.samples[f.lane.index] = Some(Generated::of(&self.model.vocab, &f.lane, sampled));
                    if active.samples.iter().all(Option::is_some) {
                        self.finish(owner);
                    }
                }
                Err(e @ GenerateError::Deadline { .. }) => self.fail(owner, ErrorCode::Timeout, e.to_string()),
                Err(e) => self.fail(owner, ErrorCode::Internal, chain(&e)),
            }
        }
    }

    fn finish(&mut self, owner: u64) {
        let Some(active) = self.active.get_mut(&owner) else { return };
        let samples: Vec<Generated> = std::mem::take(&mut active.samples).into_iter().flatten().collect();
        // every sequence holds its share of the batched calls: the request's time is their sum
        let mut timing = Timing::default();
        samples.iter().for_each(|g| timing.add(&g.timing));
        let lm = self.model.teacher.as_mut().map(|t| t as &mut dyn LanguageModel);
        let outputs = match choose(&active.request, samples, lm) {
            Ok(outputs) => outputs,
            Err(e) => return self.fail(owner, ErrorCode::Internal, chain(&e)),
        };
        let Some(active) = self.active.remove(&owner) else { return };
        let started = active.started.unwrap_or(active.job.received);
        let line = ok_line(&active.job.id, &outputs, &timing, &active.request, (active.job.received, started));
        // counted before the answer goes out: a client reading the metrics next sees its request
        let metrics = &self.shared.metrics;
        metrics.answered("ok");
        metrics.timed(started.duration_since(active.job.received), started.elapsed(), &timing, active.request.steps);
        self.shared.served.fetch_add(1, Ordering::Relaxed);
        active.job.reply.send(Answer::ok(line));
    }

    fn fail(&mut self, owner: u64, code: ErrorCode, message: String) {
        self.batch.remove_owner(owner);
        if let Some(active) = self.active.remove(&owner) {
            self.shared.metrics.answered(code.as_str());
            self.shared.served.fetch_add(1, Ordering::Relaxed);
            active.job.reply.send(Rejection::new(active.job.id.clone(), code, message).into());
        }
    }

    fn fail_all(&mut self, code: ErrorCode, message: String) {
        log::error!("the batch failed: {message}");
        let owners: Vec<u64> = self.active.keys().copied().collect();
        for owner in owners {
            self.fail(owner, code, message.clone());
        }
    }
}
