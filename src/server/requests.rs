//! Requests as the server takes them (its defaults and limits applied), and the answer line of
//! one that is done.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Shared;
use crate::error::{GenerateError, RequestError};
use crate::generate::{Generated, Limits, Request};
use crate::model::Model;
use crate::protocol::GenerateParams;
use crate::sampler::Timing;

/// A request of the protocol, with the server's defaults and limits applied.
pub(super) fn to_request(
    p: &GenerateParams,
    shared: &Shared,
    model: &Model,
    received: Instant,
) -> Result<Request, GenerateError> {
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
    let steps = p.steps.unwrap_or(config.default_steps);
    let report_every = match (p.stream.unwrap_or(false), p.every) {
        (true, every) => Some(every.unwrap_or(Request::default_every(steps))),
        (false, None) => None,
        (false, Some(_)) => return Err(RequestError::EveryWithoutStream.into()),
    };
    let request = Request {
        steps,
        method: p.method()?,
        seed: p.seed.unwrap_or_else(rand::random), // reported in the response, so it can be replayed
        num,
        batch: num.saturating_mul(mbr.max(rerank)).clamp(1, limits.max_batch.max(1)),
        controls: p.controls(),
        guide: p.guide()?,
        mbr,
        rerank,
        rerank_by: p.rerank_by,
        block_repeats: p.block_repeats.unwrap_or(true),
        deadline: Some(received + timeout),
        report_every,
        ..Request::default()
    };
    request.validate(&limits)?;
    Ok(request)
}

/// The response of a request: its outputs, and its time (`received`, `started`: when its first
/// sequence joined the batch).
pub(super) fn ok_line(
    id: &Value,
    outputs: &[Generated],
    timing: &Timing,
    request: &Request,
    (received, started): (Instant, Instant),
) -> String {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let result = |g: &Generated| match g.lm_nll {
        Some(nll) => json!({ "text": g.text, "tokens": g.tokens, "lm_nll": nll }),
        None => json!({ "text": g.text, "tokens": g.tokens }),
    };
    let results: Vec<Value> = outputs.iter().map(result).collect();
    json!({
        "id": id,
        "ok": true,
        "texts": outputs.iter().map(|g| g.text.as_str()).collect::<Vec<_>>(),
        "results": results,
        "seed": request.seed,
        "timings": {
            "queue_ms": ms(started.duration_since(received)),
            "run_ms": ms(started.elapsed()),
            "total_ms": ms(received.elapsed()),
            "steps": request.steps,
            "denoiser_ms": ms(timing.denoiser),
            "guidance_ms": ms(timing.guidance),
            "host_ms": ms(timing.host()),
        },
    })
    .to_string()
}
