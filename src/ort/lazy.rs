//! A graph's session opened on first use: a request that names no control costs no guidance
//! session (on TensorRT no engine build), and `dlm generate` without controls opens only the
//! denoiser. [`LazySession::open_now`] opens it at load instead (`dlm serve --preload`).

use std::path::{Path, PathBuf};

use ort::session::Session;

use super::providers::{Device, SessionOptions};
use super::session::open_session;
use super::OrtRuntime;
use crate::error::{InferenceError, LoadError};
use crate::manifest::Graph;

pub struct LazySession {
    runtime: OrtRuntime,
    dir: PathBuf,
    graph: Graph,
    opts: SessionOptions,
    session: Option<(Session, Device)>,
}

impl LazySession {
    /// Nothing is opened yet.
    pub fn new(runtime: &OrtRuntime, dir: &Path, graph: &Graph, opts: &SessionOptions) -> Self {
        let (runtime, dir, graph, opts) = (runtime.clone(), dir.to_path_buf(), graph.clone(), opts.clone());
        Self { runtime, dir, graph, opts, session: None }
    }

    pub fn name(&self) -> &str {
        &self.graph.name
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Open the session now (a no-op when it is open): the device it runs on.
    pub fn open_now(&mut self) -> Result<Device, LoadError> {
        if let Some((_, device)) = &self.session {
            return Ok(*device);
        }
        let (session, device) = open_session(&self.runtime, &self.dir, &self.graph, &self.opts)?;
        self.session = Some((session, device));
        Ok(device)
    }

    /// The session, opened now if this is its first use, and the graph's name.
    pub fn get(&mut self) -> Result<(&mut Session, &str), InferenceError> {
        let (session, _) = match self.session.take() {
            Some(open) => self.session.insert(open),
            None => {
                log::info!("opening {} on first use", self.graph.name);
                let open = open_session(&self.runtime, &self.dir, &self.graph, &self.opts)
                    .map_err(|source| InferenceError::Open { graph: self.graph.name.clone(), source: Box::new(source) })?;
                self.session.insert(open)
            }
        };
        Ok((session, &self.graph.name))
    }

    /// The session if it has been opened.
    pub fn opened(&mut self) -> Option<&mut Session> {
        self.session.as_mut().map(|(session, _)| session)
    }
}
