//! The inference thread on a model of fakes (no ONNX Runtime): what the server adds to the
//! engine's loop, that is answers and their codes, refusals while draining, clients that
//! leave, the counts and gauges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::run;
use crate::model::fake;
use crate::protocol::{ErrorCode, GenerateParams};
use crate::sampler::fakes::ConstantWord;
use crate::server::metrics::{Build, Metrics};
use crate::server::queue::{Answer, Job, Outstanding, Reply};
use crate::server::{Schedule, ServerConfig, Shared};

fn shared(stopping: bool) -> Shared {
    let config = ServerConfig {
        queue: 16,
        max_line: 1 << 16,
        timeout: Duration::from_secs(600),
        drain: Duration::ZERO,
        default_steps: 3,
        max_samples: 64,
        max_batch: 2,
        schedule: Schedule::Batched,
        max_connections: 4,
        idle: Duration::from_secs(60),
        max_pending: 1 << 20,
    };
    let build = Build {
        version: "0".into(),
        provider: "fake".into(),
        precision: "fp32".into(),
        onnxruntime: "-".into(),
        manifest_sha256: "-".into(),
    };
    Shared::new(config, Arc::new(AtomicBool::new(stopping)), json!({}), json!({}), Metrics::new(build))
}

/// Run the inference thread's loop on `requests` (queued before it starts) with a recording
/// fake: each request's answer (None: none came), and the denoiser's calls.
fn serve(shared: &Shared, requests: &[(Value, bool)]) -> (Vec<Option<Answer>>, usize) {
    let denoiser = ConstantWord::new(vec![3.0, 0.0]);
    let calls = Arc::clone(&denoiser.calls);
    let model = fake::model(Box::new(denoiser), Vec::new());
    let (sender, jobs) = mpsc::sync_channel(requests.len());
    let mut answers: Vec<Option<oneshot::Receiver<Answer>>> = Vec::new();
    for (k, (params, client_stays)) in requests.iter().enumerate() {
        let params: GenerateParams = serde_json::from_value(params.clone()).expect("valid parameters");
        let (reply, answer) = Reply::once();
        let outstanding = Outstanding::new(&shared.outstanding);
        let job = Job { id: json!(k), params: Box::new(params), received: Instant::now(), reply, outstanding };
        shared.queue_depth.fetch_add(1, Ordering::SeqCst);
        sender.send(job).expect("room in the queue");
        answers.push(client_stays.then_some(answer)); // a receiver dropped: the client left
    }
    drop(sender);
    std::thread::sleep(Duration::from_millis(2)); // a deadline of 1 ms has passed in the queue
    run(model, jobs, shared);
    let answers = answers.into_iter().map(|a| a.and_then(|mut a| a.try_recv().ok())).collect();
    let calls = calls.lock().unwrap().len();
    (answers, calls)
}

fn code(answer: &Option<Answer>) -> Option<Option<ErrorCode>> {
    answer.as_ref().map(|a| a.code)
}

#[test]
fn every_job_is_answered_once_with_its_code_and_counted() {
    let shared = shared(false);
    let requests = [
        (json!({"steps": 4, "num": 3}), true),
        (json!({"steps": 1000}), true),
        (json!({"steps": 4, "pos": "a"}), true),
        (json!({"steps": 2, "timeout_ms": 1}), true),
        (json!({"steps": 4}), false),
    ];
    let (answers, calls) = serve(&shared, &requests);
    let codes: Vec<_> = answers.iter().map(code).collect();
    let expected = [
        Some(None),
        Some(Some(ErrorCode::InvalidArgument)),
        Some(Some(ErrorCode::InvalidArgument)),
        Some(Some(ErrorCode::Timeout)),
        None,
    ];
    assert_eq!(codes, expected, "{answers:?}");
    let ok: Value = serde_json::from_str(&answers[0].as_ref().unwrap().body).unwrap();
    assert_eq!((ok["id"].clone(), ok["texts"].as_array().map(Vec::len)), (json!(0), Some(3)));
    assert!(answers[3].as_ref().unwrap().body.contains("in the queue"), "{answers:?}");
    // the answered request and the one whose client left; refusals are not counted as served
    assert_eq!(shared.served.load(Ordering::SeqCst), 2);
    assert_eq!(shared.queue_depth.load(Ordering::SeqCst), 0);
    assert_eq!(shared.outstanding.load(Ordering::SeqCst), 0, "every job dropped once answered");
    assert!(!shared.engine_alive.load(Ordering::SeqCst), "the engine is marked dead once it returns");
    // 3 sequences with --max-batch 2 over 4 steps: 2 + 2 iterations (the left one never ran)
    assert_eq!(calls, 8);
}

#[test]
fn past_the_drain_time_queued_jobs_are_told_the_server_is_stopping() {
    let shared = shared(true);
    let (answers, calls) = serve(&shared, &[(json!({"steps": 4}), true), (json!({"steps": 2}), true)]);
    assert!(answers.iter().all(|a| code(a) == Some(Some(ErrorCode::ShuttingDown))), "{answers:?}");
    assert_eq!((calls, shared.served.load(Ordering::SeqCst)), (0, 0));
}
