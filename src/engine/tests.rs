//! The engine's scheduling on a model of fakes (no ONNX Runtime): a scripted source of jobs
//! that records what the engine did with each, and the sampler's recording denoiser.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::Array3;

use super::*;
use crate::controls::ControlRequest;
use crate::error::RequestError;
use crate::model::fake;
use crate::sampler::fakes::{ConstantWord, Mixing};
use crate::sampler::Denoiser;

/// What happened to a job, and at which iteration (iterations started before it).
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Taken(u64, usize),
    Done(u64, usize),
    Failed(u64, String),
    Left(u64, usize),
    BatchFailed(Vec<u64>, String),
}

/// Jobs (an id and a request) that arrive once `at` iterations have started (sooner when the
/// engine waits with nothing admitted); job `gone.0`'s client leaves after `gone.1` iterations.
#[derive(Default)]
struct Script {
    queue: VecDeque<(usize, u64, Request)>,
    gone: Option<(u64, usize)>,
    iterations: usize,
    events: Vec<Event>,
    outputs: Vec<(u64, Vec<Vec<u32>>)>,
}

impl Script {
    fn new(jobs: Vec<(usize, u64, Request)>) -> Self {
        Self { queue: jobs.into(), ..Self::default() }
    }

    fn done_order(&self) -> Vec<u64> {
        self.events.iter().filter_map(|e| if let Event::Done(id, _) = e { Some(*id) } else { None }).collect()
    }
}

impl Jobs for Script {
    type Job = u64;

    fn next(&mut self, wait: bool) -> Next<u64> {
        match self.queue.front() {
            None => Next::Closed,
            Some(&(at, ..)) if at > self.iterations && !wait => Next::Empty,
            Some(_) => {
                let (_, id, request) = self.queue.pop_front().expect("a job is there");
                self.queue.push_front((0, id, request)); // handed over by take
                Next::Job(id)
            }
        }
    }

    fn take(&mut self, job: u64, model: &Model) -> Option<(u64, Request)> {
        let (_, id, request) = self.queue.pop_front().expect("the job next gave");
        assert_eq!(id, job);
        self.events.push(Event::Taken(id, self.iterations));
        match request.validate(&crate::generate::Limits::of(model)) {
            Ok(()) => Some((id, request)),
            Err(e) => {
                self.events.push(Event::Failed(id, e.to_string()));
                None
            }
        }
    }

    fn gone(&self, job: &u64) -> bool {
        self.gone.is_some_and(|(id, after)| id == *job && self.iterations >= after)
    }

    fn left(&mut self, job: u64) {
        self.events.push(Event::Left(job, self.iterations));
    }

    fn done(&mut self, job: u64, done: Done<'_>) {
        assert!(done.started.is_some(), "a job that ran has a start");
        self.events.push(Event::Done(job, self.iterations));
        self.outputs.push((job, done.outputs.iter().map(|g| g.ids.clone()).collect()));
    }

    fn failed(&mut self, job: u64, failure: Failure) {
        self.events.push(Event::Failed(job, format!("{failure:?}")));
    }

    fn batch_failed(&mut self, jobs: Vec<u64>, failure: BatchFailure) {
        let why = match failure {
            BatchFailure::Error(e) => e.to_string(),
            BatchFailure::Panic(_) => "panic".into(),
        };
        self.events.push(Event::BatchFailed(jobs, why));
    }

    fn busy(&mut self, busy: bool) {
        self.iterations += usize::from(busy);
    }
}

/// A constant-word denoiser that first runs `act` with its call number (1, 2, ...): to stall, fail
/// or panic on a chosen call.
struct OnCall<F> {
    inner: ConstantWord,
    calls: usize,
    act: F,
}

impl<F: FnMut(usize) -> Result<(), InferenceError>> OnCall<F> {
    fn new(act: F) -> Self {
        Self { inner: ConstantWord::new(vec![3.0, 0.0]), calls: 0, act }
    }
}

impl<F: FnMut(usize) -> Result<(), InferenceError>> Denoiser for OnCall<F> {
    fn denoise(
        &mut self,
        x: &Array3<f32>,
        t: &[i64],
        prev: Option<&Array3<f32>>,
        out: &mut Array3<f32>,
    ) -> Result<(), InferenceError> {
        self.calls += 1;
        (self.act)(self.calls)?;
        self.inner.denoise(x, t, prev, out)
    }
}

fn request(steps: usize, num: usize, seed: u64) -> Request {
    Request { steps, num, batch: num.min(16), seed, ..Request::default() }
}

/// A model whose denoiser predicts word 1 and records its calls: rows per call.
fn recording() -> (Model, Arc<Mutex<Vec<Vec<i64>>>>) {
    let denoiser = ConstantWord::new(vec![3.0, 0.0]);
    let calls = Arc::clone(&denoiser.calls);
    (fake::model(Box::new(denoiser), Vec::new()), calls)
}

fn rows(calls: &Mutex<Vec<Vec<i64>>>) -> Vec<usize> {
    calls.lock().unwrap().iter().map(Vec::len).collect()
}

#[test]
fn one_job_runs_its_sequences_batch_by_batch_and_each_joins_as_another_leaves() {
    let (mut model, calls) = recording();
    let out = generate(&mut model, &Request { steps: 4, num: 3, batch: 2, ..Request::default() }).unwrap();
    // two sequences for 4 steps, then the third alone
    assert_eq!(rows(&calls), [2, 2, 2, 2, 1, 1, 1, 1]);
    assert_eq!(out.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(out.iter().all(|g| g.ids == [1; 4]), "{:?}", out.iter().map(|g| &g.ids).collect::<Vec<_>>());
    // MBR of 2 per output: 6 samples drawn, 3 outputs
    let out = generate(&mut model, &Request { steps: 2, num: 3, mbr: 2, batch: 6, ..Request::default() }).unwrap();
    assert_eq!((out.len(), rows(&calls)[8..].to_vec()), (3, vec![6, 6]));
}

#[test]
fn one_job_answers_what_it_asks_for_errors_included() {
    let (mut model, _) = recording();
    let too_many = Request { steps: 101, ..Request::default() };
    assert!(matches!(
        generate(&mut model, &too_many),
        Err(GenerateError::Request(RequestError::Steps { got: 101, .. }))
    ));
    let pos = Request {
        steps: 3,
        controls: ControlRequest { pos: Some("a".into()), ..Default::default() },
        ..Request::default()
    };
    assert!(matches!(generate(&mut model, &pos), Err(GenerateError::Control(_))), "the fake model has no pos control");
    let late = Request { steps: 3, deadline: Some(Instant::now()), ..Request::default() };
    assert!(matches!(generate(&mut model, &late), Err(GenerateError::Deadline { done: 0, steps: 3 })));
}

#[test]
fn a_sequence_gets_the_same_output_alone_and_beside_other_requests() {
    // unclamped, the final latent rounds to the word of its quadrant: outputs differ by seed
    let request = |steps, seed| Request { clamp: false, block_repeats: false, ..request(steps, 2, seed) };
    let mut model = fake::model(Box::new(Mixing), Vec::new());
    let alone: Vec<Vec<Vec<u32>>> = (0..3)
        .map(|k| generate(&mut model, &request(5 + k, k as u64)).unwrap().into_iter().map(|g| g.ids).collect())
        .collect();
    assert!(alone[0] != alone[1] && alone[1] != alone[2] && alone[0][0] != alone[0][1], "{alone:?}");
    let mut script = Script::new((0..3).map(|k| (k, k as u64, request(5 + k, k as u64))).collect());
    run(&mut model, &mut script, 16, Schedule::Batched);
    script.outputs.sort();
    assert_eq!(script.outputs, (0..3).map(|k| (k as u64, alone[k].clone())).collect::<Vec<_>>());
}

#[test]
fn short_requests_pass_long_ones_batched_and_wait_for_them_fifo() {
    for (schedule, order) in [(Schedule::Batched, [1, 2, 0]), (Schedule::Fifo, [0, 1, 2])] {
        let (mut model, calls) = recording();
        let jobs = vec![(0, 0, request(30, 1, 0)), (1, 1, request(3, 1, 1)), (2, 2, request(5, 1, 2))];
        let mut script = Script::new(jobs);
        run(&mut model, &mut script, 1, schedule);
        assert_eq!(script.done_order(), order, "{schedule:?}");
        assert!(rows(&calls).iter().all(|&n| n == 1), "share 1: one sequence stepped per call");
        assert_eq!(calls.lock().unwrap().len(), 38, "{schedule:?}: every step of every request, none twice");
    }
}

#[test]
fn at_most_pool_times_share_sequences_are_admitted_and_a_request_has_at_most_its_share() {
    let (mut model, calls) = recording();
    // six requests of four sequences, share 2: the pool (8) holds two of each of four requests
    let jobs = (0..6).map(|k| (0, k, request(4, 4, k))).collect();
    let mut script = Script::new(jobs);
    run(&mut model, &mut script, 2, Schedule::Batched);
    let taken: Vec<usize> =
        script.events.iter().filter_map(|e| if let Event::Taken(_, at) = e { Some(*at) } else { None }).collect();
    // four requests fill the pool (2 sequences each) before the first iteration; the other two
    // wait until sequences leave
    assert_eq!(&taken[..4], [0, 0, 0, 0]);
    assert!(taken[4..].iter().all(|&at| at > 0), "{taken:?}");
    assert!(rows(&calls).iter().all(|&n| n <= 2), "at most share sequences per call");
    assert_eq!(script.done_order().len(), 6);
    assert_eq!(rows(&calls).iter().sum::<usize>(), 6 * 4 * 4, "every sequence of every request, every step");
}

#[test]
fn expired_requests_are_failed_in_the_queue_and_while_they_run_and_the_others_go_on() {
    // the denoiser's third call outlasts the running request's deadline
    let until = Instant::now() + Duration::from_millis(50);
    let slow = OnCall::new(move |call| {
        if call == 3 {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        Ok(())
    });
    let mut model = fake::model(Box::new(slow), Vec::new());
    let expired = Request { deadline: Some(Instant::now()), ..request(5, 1, 0) };
    let running = Request { deadline: Some(until), ..request(20, 1, 1) };
    let jobs = vec![(0, 0, expired), (0, 1, running), (0, 2, request(6, 1, 2))];
    let mut script = Script::new(jobs);
    run(&mut model, &mut script, 4, Schedule::Batched);
    let failed: Vec<&Event> = script.events.iter().filter(|e| matches!(e, Event::Failed(..))).collect();
    assert_eq!(failed.len(), 2, "{:?}", script.events);
    assert_eq!(*failed[0], Event::Failed(0, "ExpiredInQueue".into()));
    let Event::Failed(1, why) = failed[1] else { panic!("{failed:?}") };
    assert!(why.starts_with("Failed(Deadline { done: "), "{why}");
    assert_eq!(script.done_order(), [2]);
}

#[test]
fn a_request_whose_client_left_leaves_the_batch_unanswered() {
    let (mut model, calls) = recording();
    let mut script = Script::new(vec![(0, 0, request(10, 2, 0)), (0, 1, request(10, 1, 1))]);
    script.gone = Some((0, 3));
    run(&mut model, &mut script, 4, Schedule::Batched);
    assert!(script.events.contains(&Event::Left(0, 3)), "{:?}", script.events);
    assert_eq!(script.done_order(), [1]);
    assert!(!script.events.iter().any(|e| matches!(e, Event::Done(0, _) | Event::Failed(0, _))));
    // three iterations of all three sequences, then the one left alone
    assert_eq!(rows(&calls), [[3; 3].as_slice(), &[1; 7]].concat());
}

#[test]
fn a_failed_iteration_fails_every_admitted_request_and_the_engine_goes_on() {
    let breaks = OnCall::new(|call| match call {
        2 => Err(InferenceError::Run { graph: "fake".into(), source: "broken".into() }),
        5 => panic!("the fake panics on its fifth call"),
        _ => Ok(()),
    });
    let mut model = fake::model(Box::new(breaks), Vec::new());
    // 0 and 1 run together into the error; 2 arrives after it and runs into the panic; 3 after that
    let jobs =
        vec![(0, 0, request(4, 1, 0)), (0, 1, request(4, 1, 1)), (2, 2, request(4, 1, 2)), (5, 3, request(2, 1, 3))];
    let mut script = Script::new(jobs);
    run(&mut model, &mut script, 4, Schedule::Batched);
    let batch_failed: Vec<&Event> = script.events.iter().filter(|e| matches!(e, Event::BatchFailed(..))).collect();
    assert_eq!(
        batch_failed,
        [
            &Event::BatchFailed(vec![0, 1], "run of graph fake failed".into()),
            &Event::BatchFailed(vec![2], "panic".into())
        ]
    );
    assert_eq!(script.done_order(), [3]);
}

#[test]
fn a_streaming_job_reports_every_k_steps_and_at_the_last_each_sample_in_order() {
    let (mut model, _) = recording();
    let mut steps: Vec<(usize, usize, i64, Vec<Option<String>>)> = Vec::new();
    let streaming = Request { steps: 7, num: 3, batch: 2, report_every: Some(3), ..Request::default() };
    let out =
        generate_watched(&mut model, &streaming, &mut |s| steps.push((s.step, s.of, s.t, s.texts.to_vec()))).unwrap();
    let at: Vec<(usize, usize)> = steps.iter().map(|s| (s.0, s.1)).collect();
    // samples 0 and 1 run together, then sample 2 (a batch of 2): each reports at 3, 6 and 7 of 7
    assert_eq!(at, [(3, 7), (6, 7), (7, 7), (3, 7), (6, 7), (7, 7)]);
    let started = |s: &(usize, usize, i64, Vec<Option<String>>)| s.3.iter().map(Option::is_some).collect::<Vec<_>>();
    assert_eq!(started(&steps[0]), [true, true, false], "a sample not started yet has no text");
    assert_eq!(started(&steps[5]), [true, true, true]);
    // t counts down the respaced schedule: the last step is at t = 0
    assert!(steps[0].2 > steps[1].2 && steps[1].2 > steps[2].2 && steps[2].2 == 0, "{steps:?}");
    let last: Vec<String> = steps[5].3.iter().flatten().cloned().collect();
    assert_eq!(last, out.iter().map(|g| g.text.clone()).collect::<Vec<_>>(), "the last x0_hat rounds to the output");
    let quiet = Request { report_every: None, ..streaming.clone() };
    let mut calls = 0;
    generate_watched(&mut model, &quiet, &mut |_| calls += 1).unwrap();
    assert_eq!(calls, 0, "a request that does not stream reports nothing");
    for every in [0, 8] {
        let bad = Request { report_every: Some(every), ..streaming.clone() };
        let e = generate(&mut model, &bad).unwrap_err();
        assert!(e.to_string().contains("between 1 and the request's steps (7)"), "{e}");
    }
}
