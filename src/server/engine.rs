//! The inference thread: it alone owns the ONNX Runtime sessions and answers queued jobs in
//! order, each exactly once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::connection::Reply;
use super::Shared;
use crate::error::{GenerateError, RequestError};
use crate::generate::{generate, Generated, Limits, Request};
use crate::model::Model;
use crate::protocol::{ErrorCode, GenerateParams, Rejection};

/// A generate request waiting for the inference thread.
pub struct Job {
    pub id: Value,
    pub params: Box<GenerateParams>,
    pub received: Instant,
    /// Where the one response line goes (the connection's writer).
    pub reply: Reply,
}

/// Serve jobs until every sender is gone. Marks the engine dead when it returns or unwinds.
pub fn run(mut model: Model, jobs: Receiver<Job>, shared: &Shared) {
    struct Alive<'a>(&'a Shared);
    impl Drop for Alive<'_> {
        fn drop(&mut self) {
            self.0.engine_alive.store(false, Ordering::SeqCst);
        }
    }
    let _alive = Alive(shared);
    while let Ok(job) = jobs.recv() {
        shared.queue_depth.fetch_sub(1, Ordering::SeqCst);
        let line = answer(&mut model, &job, shared);
        // The client may be gone; its answer is dropped, the service goes on.
        job.reply.send(line);
    }
}

fn answer(model: &mut Model, job: &Job, shared: &Shared) -> String {
    let fail = |code, message: String| Rejection::new(job.id.clone(), code, message).to_line();
    if shared.drain_expired() {
        return fail(ErrorCode::ShuttingDown, "the server is stopping; this request was not started".into());
    }
    let request = match to_request(&job.params, shared, model, job.received) {
        Ok(r) => r,
        Err(e) => return fail(ErrorCode::InvalidArgument, e.to_string()),
    };
    let started = Instant::now();
    if request.deadline.is_some_and(|d| started >= d) {
        let waited = started.duration_since(job.received).as_millis();
        return fail(ErrorCode::Timeout, format!("deadline passed after {waited} ms in the queue"));
    }
    *shared.busy_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
    let result = catch_unwind(AssertUnwindSafe(|| generate(model, &request)));
    *shared.busy_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    shared.served.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(Ok(outputs)) => ok_line(&job.id, &outputs, &request, job.received, started),
        Ok(Err(e @ (GenerateError::Request(_) | GenerateError::Control(_)))) => {
            fail(ErrorCode::InvalidArgument, e.to_string())
        }
        Ok(Err(e @ GenerateError::Deadline { .. })) => fail(ErrorCode::Timeout, e.to_string()),
        Ok(Err(e @ (GenerateError::Inference(_) | GenerateError::NonFinite { .. }))) => {
            fail(ErrorCode::Internal, e.to_string())
        }
        Err(_) => {
            fail(ErrorCode::Internal, "the inference thread panicked on this request (a bug: please report it)".into())
        }
    }
}

/// A request of the protocol, with the server's defaults and limits applied.
fn to_request(p: &GenerateParams, shared: &Shared, model: &Model, received: Instant) -> Result<Request, GenerateError> {
    let config = &shared.config;
    let num = p.num.unwrap_or(1);
    let (mbr, rerank) = (p.mbr.unwrap_or(1), p.rerank.unwrap_or(1));
    let timeout = match p.timeout_ms {
        Some(0) => return Err(RequestError::Timeout { got: 0, max: config.timeout.as_millis() as u64 }.into()),
        Some(ms) => Duration::from_millis(ms).min(config.timeout), // the server caps it
        None => config.timeout,
    };
    let model_limits = Limits::of(model);
    let limits = Limits {
        max_samples: config.max_samples,
        max_batch: config.max_batch.min(model_limits.max_batch),
        ..model_limits
    };
    let request = Request {
        steps: p.steps.unwrap_or(config.default_steps),
        method: p.method()?,
        seed: p.seed.unwrap_or(0),
        num,
        batch: num.saturating_mul(mbr.max(rerank)).clamp(1, limits.max_batch.max(1)),
        controls: p.controls(),
        guide: p.guide()?,
        mbr,
        rerank,
        block_repeats: p.block_repeats.unwrap_or(true),
        deadline: Some(received + timeout),
        ..Request::default()
    };
    request.validate(&limits)?;
    Ok(request)
}

fn ok_line(id: &Value, outputs: &[Generated], request: &Request, received: Instant, started: Instant) -> String {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    // Sequences of one batch share its timing: add each batch once.
    let batches: Vec<_> = outputs.chunks(request.batch.max(1)).map(|c| &c[0].timing).collect();
    let sum = |f: &dyn Fn(&crate::sampler::Timing) -> Duration| batches.iter().map(|t| f(t)).sum::<Duration>();
    let results: Vec<Value> = outputs.iter().map(|g| json!({ "text": g.text, "tokens": g.tokens })).collect();
    json!({
        "id": id,
        "ok": true,
        "texts": outputs.iter().map(|g| g.text.as_str()).collect::<Vec<_>>(),
        "results": results,
        "timings": {
            "queue_ms": ms(started.duration_since(received)),
            "run_ms": ms(started.elapsed()),
            "total_ms": ms(received.elapsed()),
            "steps": request.steps,
            "denoiser_ms": ms(sum(&|t| t.denoiser)),
            "guidance_ms": ms(sum(&|t| t.guidance)),
            "host_ms": ms(sum(&|t| t.host())),
        },
    })
    .to_string()
}
