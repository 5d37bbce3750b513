//! The engine: one loop that schedules generation requests over a [`Model`] per iteration, for
//! `dlm serve` (jobs from the server's queue, `crate::server::engine`) and `dlm generate` (one
//! job, [`generate`]). The sequences of admitted requests share each denoiser call (each at its
//! own step; at most `share` of them, those that would finish first), finished ones leave, and
//! waiting requests join while fewer than [`POOL`] x `share` sequences are admitted. A request
//! has at most `share` sequences admitted at once (the rest join as its earlier ones finish), so
//! a large one never fills the pool: another client's short request joins at once and passes
//! it. A request whose client left leaves the batch at the next iteration. Every job is
//! answered exactly once (or, its client gone, dropped). Where jobs come from and where their
//! answers go is [`Jobs`]'s; this loop knows no transport.

mod one;
#[cfg(test)]
mod tests;

pub use one::{generate, generate_watched};

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{GenerateError, InferenceError};
use crate::generate::{choose, course, lane, Generated, Request};
use crate::model::Model;
use crate::rerank::LanguageModel;
use crate::sampler::{Batch, Course, Timing};

/// Sequences admitted per sequence stepped at once: room for short requests to pass long ones.
pub const POOL: usize = 4;

/// How the engine takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// Per iteration: queued requests join the running batch whenever places are free.
    Batched,
    /// One request at a time, in arrival order (its own sequences batched): for comparison.
    Fifo,
}

/// What a source of jobs says when asked for the next one.
pub enum Next<J> {
    Job(J),
    /// None waiting now.
    Empty,
    /// None will come: every sender is gone.
    Closed,
}

/// Why a job failed, as the engine saw it.
#[derive(Debug)]
pub enum Failure {
    /// Its request does not fit this model (controls, guidance, rerank, cost).
    Invalid(GenerateError),
    /// Its deadline had passed when it left the queue.
    ExpiredInQueue,
    /// Its deadline passed before its remaining sequences could start.
    ExpiredBeforeStart,
    /// A sequence of it failed (deadline, non-finite latent), or its outputs could not be chosen.
    Failed(GenerateError),
}

/// Why a whole iteration failed (every admitted job fails with it).
pub enum BatchFailure {
    Error(InferenceError),
    /// The iteration panicked: the payload, for a caller that lets it unwind on.
    Panic(Box<dyn Any + Send>),
}

/// A job's outputs, ready to answer.
pub struct Done<'a> {
    pub request: &'a Request,
    pub outputs: Vec<Generated>,
    /// The request's time: the sum of its sequences' shares of the batched calls.
    pub timing: Timing,
    /// When its first sequence joined the batch.
    pub started: Option<Instant>,
}

/// Where a streaming job's sequences stand after an iteration (its course reports this step).
pub struct Step<'a> {
    /// Steps taken (by the sequences that reported), 1..=`of`.
    pub step: usize,
    pub of: usize,
    /// The model's timestep t of that step.
    pub t: i64,
    /// The latest rounded x0_hat of each of the request's samples (num x S), in order; None for
    /// one not started yet (a finished one keeps its last).
    pub texts: &'a [Option<String>],
}

/// Where the engine's jobs come from and where their answers go.
pub trait Jobs {
    type Job;
    /// The next job; with `wait` (nothing is admitted) block until one comes or none will.
    fn next(&mut self, wait: bool) -> Next<Self::Job>;
    /// A job that left the queue as a request (its defaults and limits applied, validated), or
    /// None when the source answered it itself (refused: invalid, the server stopping).
    fn take(&mut self, job: Self::Job, model: &Model) -> Option<(Self::Job, Request)>;
    /// Whether the job's client is gone: it leaves unanswered ([`Jobs::left`]).
    fn gone(&self, job: &Self::Job) -> bool;
    fn left(&mut self, job: Self::Job);
    fn done(&mut self, job: Self::Job, done: Done<'_>);
    fn failed(&mut self, job: Self::Job, failure: Failure);
    /// The iteration failed: every admitted job, in admission order, with why.
    fn batch_failed(&mut self, jobs: Vec<Self::Job>, failure: BatchFailure);
    /// A streaming job's sequences after an iteration in which they reported, before any of
    /// them is answered.
    fn progress(&mut self, _job: &Self::Job, _step: &Step<'_>) {}
    /// Called with true before each iteration and false after it.
    fn busy(&mut self, _busy: bool) {}
    /// The sequences in the batch after an iteration.
    fn sequences(&mut self, _n: usize) {}
}

/// An admitted request: its sequences run (or wait for room) in the batch.
struct Active<J> {
    job: J,
    request: Request,
    course: Arc<Course>,
    /// Samples to draw (num x mbr or rerank) and the next one to admit.
    total: usize,
    next: usize,
    /// Its sequences in the batch now (at most `share`).
    running: usize,
    samples: Vec<Option<Generated>>,
    /// A streaming request's latest text per sample (empty for the others).
    texts: Vec<Option<String>>,
    /// When its first sequence joined the batch.
    started: Option<Instant>,
}

struct Engine<'m, J> {
    model: &'m mut Model,
    batch: Batch,
    /// By admission order: the first with sequences waiting and under its share gets the next
    /// free places.
    active: BTreeMap<u64, Active<J>>,
    next_owner: u64,
    share: usize,
    schedule: Schedule,
}

/// Run the jobs of `jobs` on `model` until none will come and every admitted one is answered:
/// at most `share` sequences stepped per iteration, and per request admitted at once.
pub fn run<S: Jobs>(model: &mut Model, jobs: &mut S, share: usize, schedule: Schedule) {
    let share = share.max(1);
    let batch = Batch::with_limit(share);
    let mut engine = Engine { model, batch, active: BTreeMap::new(), next_owner: 0, share, schedule };
    let mut closed = false;
    loop {
        closed |= engine.admit(jobs);
        if engine.batch.is_empty() {
            if closed && engine.active.is_empty() {
                return;
            }
            continue;
        }
        engine.drop_gone_clients(jobs);
        engine.iterate(jobs);
        jobs.sequences(engine.batch.len());
    }
}

impl<J> Engine<'_, J> {
    /// Fill free places (up to [`POOL`] x `share` sequences; each iteration steps the `share`
    /// that would finish first): first the remaining sequences of admitted requests, each up to
    /// its share, then new jobs (blocking only when nothing is admitted). FIFO takes a new job
    /// only when none is active. Returns true once no job will come.
    fn admit<S: Jobs<Job = J>>(&mut self, jobs: &mut S) -> bool {
        let pool = POOL * self.share;
        loop {
            while self.batch.len() < pool {
                let share = self.share;
                let waiting = self.active.iter_mut().find(|(_, a)| a.next < a.total && a.running < share);
                let Some((&owner, waiting)) = waiting else { break };
                if waiting.course.expired(Instant::now()) {
                    self.fail(jobs, owner, Failure::ExpiredBeforeStart);
                    continue;
                }
                waiting.started.get_or_insert_with(Instant::now);
                let l = lane(self.model, owner, &waiting.course, waiting.request.seed, waiting.next);
                waiting.next += 1;
                waiting.running += 1;
                self.batch.push(l);
            }
            let fifo_busy = self.schedule == Schedule::Fifo && !self.active.is_empty();
            if self.batch.len() >= pool || fifo_busy {
                return false;
            }
            let job = match jobs.next(self.active.is_empty()) {
                Next::Job(job) => job,
                Next::Empty => return false,
                Next::Closed => return true,
            };
            if let Some((job, request)) = jobs.take(job, self.model) {
                self.start(jobs, job, request);
            }
        }
    }

    /// A job admitted, or failed at once (its request does not fit the model, or expired).
    fn start<S: Jobs<Job = J>>(&mut self, jobs: &mut S, job: J, request: Request) {
        let course = match course(self.model, &request) {
            Ok(course) => course,
            Err(e) => return jobs.failed(job, Failure::Invalid(e)),
        };
        if course.expired(Instant::now()) {
            return jobs.failed(job, Failure::ExpiredInQueue);
        }
        let total = request.num * request.samples_per_output();
        let texts = if course.report_every.is_some() { vec![None; total] } else { Vec::new() };
        let owner = self.next_owner;
        self.next_owner += 1;
        let active = Active {
            job,
            request,
            course: Arc::new(course),
            total,
            next: 0,
            running: 0,
            samples: (0..total).map(|_| None).collect(),
            texts,
            started: None,
        };
        self.active.insert(owner, active);
    }

    /// Requests whose client is gone leave the batch unanswered.
    fn drop_gone_clients<S: Jobs<Job = J>>(&mut self, jobs: &mut S) {
        let gone: Vec<u64> = self.active.iter().filter(|(_, a)| jobs.gone(&a.job)).map(|(&o, _)| o).collect();
        for owner in gone {
            self.batch.remove_owner(owner);
            if let Some(active) = self.active.remove(&owner) {
                jobs.left(active.job);
            }
        }
    }

    fn iterate<S: Jobs<Job = J>>(&mut self, jobs: &mut S) {
        jobs.busy(true);
        let (batch, model) = (&mut self.batch, &mut *self.model);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let (denoiser, mut guides, embeddings) = model.engines();
            batch.iterate(denoiser, &mut guides, embeddings)
        }));
        jobs.busy(false);
        let finished = match result {
            Ok(Ok(finished)) => finished,
            Ok(Err(e)) => return self.fail_all(jobs, BatchFailure::Error(e)),
            Err(payload) => return self.fail_all(jobs, BatchFailure::Panic(payload)),
        };
        self.report(jobs);
        for f in finished {
            let owner = f.lane.owner;
            let Some(active) = self.active.get_mut(&owner) else { continue };
            active.running -= 1;
            match f.result {
                Ok(sampled) => {
                    active.samples[f.lane.index] = Some(Generated::of(&self.model.vocab, &f.lane, sampled));
                    if active.samples.iter().all(Option::is_some) {
                        self.finish(jobs, owner);
                    }
                }
                Err(e) => self.fail(jobs, owner, Failure::Failed(e)),
            }
        }
    }

    /// Tell each streaming job where its sequences stand: one [`Step`] per job whose sequences
    /// reported in this iteration.
    fn report<S: Jobs<Job = J>>(&mut self, jobs: &mut S) {
        let progress = self.batch.take_progress();
        let mut reported: Vec<(u64, usize, usize, i64)> = Vec::new();
        for p in progress {
            let Some(active) = self.active.get_mut(&p.owner) else { continue };
            if let Some(text) = active.texts.get_mut(p.index) {
                *text = Some(self.model.vocab.decode(&p.tokens));
            }
            if !reported.iter().any(|r| r.0 == p.owner) {
                reported.push((p.owner, p.step, p.of, p.t));
            }
        }
        for (owner, step, of, t) in reported {
            if let Some(active) = self.active.get(&owner) {
                jobs.progress(&active.job, &Step { step, of, t, texts: &active.texts });
            }
        }
    }

    fn finish<S: Jobs<Job = J>>(&mut self, jobs: &mut S, owner: u64) {
        let Some(active) = self.active.get_mut(&owner) else { return };
        let samples: Vec<Generated> = std::mem::take(&mut active.samples).into_iter().flatten().collect();
        // every sequence holds its share of the batched calls: the request's time is their sum
        let mut timing = Timing::default();
        samples.iter().for_each(|g| timing.add(&g.timing));
        let lm = self.model.teacher.as_mut().map(|t| &mut **t as &mut dyn LanguageModel);
        let outputs = match choose(&active.request, samples, lm) {
            Ok(outputs) => outputs,
            Err(e) => return self.fail(jobs, owner, Failure::Failed(e)),
        };
        let Some(active) = self.active.remove(&owner) else { return };
        let done = Done { request: &active.request, outputs, timing, started: active.started };
        jobs.done(active.job, done);
    }

    fn fail<S: Jobs<Job = J>>(&mut self, jobs: &mut S, owner: u64, failure: Failure) {
        self.batch.remove_owner(owner);
        if let Some(active) = self.active.remove(&owner) {
            jobs.failed(active.job, failure);
        }
    }

    fn fail_all<S: Jobs<Job = J>>(&mut self, jobs: &mut S, failure: BatchFailure) {
        let owners: Vec<u64> = self.active.keys().copied().collect();
        owners.iter().for_each(|&owner| drop(self.batch.remove_owner(owner)));
        let failed = std::mem::take(&mut self.active).into_values().map(|a| a.job).collect();
        jobs.batch_failed(failed, failure);
    }
}
