//! `dlm generate` and the library's [`generate`]: one request as the engine's only job.

use super::{run, BatchFailure, Done, Failure, Jobs, Next, Schedule, Step};
use crate::error::GenerateError;
use crate::generate::{Generated, Limits, Request};
use crate::model::Model;

/// Generate `num` outputs, at most `batch` sequences per denoiser call (a sequence joins as
/// another leaves); sequence k always uses random stream (seed, k), so its output does not
/// depend on what it is batched with. With `mbr` or `rerank` = S > 1, output k is chosen from
/// samples k*S..(k+1)*S: their consensus (MBR) or the best by [`crate::rerank`]. The first
/// failure of a sequence fails the request.
pub fn generate(model: &mut Model, request: &Request) -> Result<Vec<Generated>, GenerateError> {
    generate_watched(model, request, &mut |_| {})
}

/// [`generate`], telling `watch` where the sequences stand whenever they report (every
/// `request.report_every` steps, and at the last).
pub fn generate_watched(
    model: &mut Model,
    request: &Request,
    watch: &mut dyn FnMut(&Step<'_>),
) -> Result<Vec<Generated>, GenerateError> {
    let mut one = One { request, given: false, answer: None, panic: None, watch };
    run(model, &mut one, request.batch, Schedule::Fifo);
    if let Some(payload) = one.panic {
        std::panic::resume_unwind(payload);
    }
    one.answer.unwrap_or_else(|| unreachable!("the engine answers every job it takes"))
}

/// The one job: `request`, and what came of it.
struct One<'r, 'w> {
    request: &'r Request,
    given: bool,
    answer: Option<Result<Vec<Generated>, GenerateError>>,
    panic: Option<Box<dyn std::any::Any + Send>>,
    watch: &'w mut dyn FnMut(&Step<'_>),
}

impl Jobs for One<'_, '_> {
    type Job = ();

    fn next(&mut self, _wait: bool) -> Next<()> {
        if std::mem::replace(&mut self.given, true) {
            Next::Closed
        } else {
            Next::Job(())
        }
    }

    fn take(&mut self, job: (), model: &Model) -> Option<((), Request)> {
        match self.request.validate(&Limits::of(model)) {
            Ok(()) => Some((job, self.request.clone())),
            Err(e) => {
                self.answer = Some(Err(e.into()));
                None
            }
        }
    }

    fn gone(&self, _job: &()) -> bool {
        false
    }

    fn left(&mut self, _job: ()) {}

    fn progress(&mut self, _job: &(), step: &Step<'_>) {
        (self.watch)(step);
    }

    fn done(&mut self, _job: (), done: Done<'_>) {
        self.answer = Some(Ok(done.outputs));
    }

    fn failed(&mut self, _job: (), failure: Failure) {
        let steps = self.request.steps;
        self.answer = Some(Err(match failure {
            Failure::Invalid(e) | Failure::Failed(e) => e,
            Failure::ExpiredInQueue | Failure::ExpiredBeforeStart => GenerateError::Deadline { done: 0, steps },
        }));
    }

    fn batch_failed(&mut self, _jobs: Vec<()>, failure: BatchFailure) {
        match failure {
            BatchFailure::Error(e) => self.answer = Some(Err(e.into())),
            BatchFailure::Panic(payload) => self.panic = Some(payload),
        }
    }
}
