//! A graph's session opened on first use: a request that names no control costs no guidance
//! session (on TensorRT no engine build), and `dlm generate` without controls opens only the
//! denoiser. [`LazySession::open_now`] opens it at load instead (`dlm serve --preload`).

use std::path::{Path, PathBuf};

use ort::session::Session;

use super::providers::SessionOptions;
use super::session::open_session;
use super::OrtRuntime;
use crate::error::{InferenceError, LoadError};
use crate::manifest::Graph;

pub struct LazySession {
    runtime: OrtRuntime,
    dir: PathBuf,
    graph: Graph,
    opts: SessionOptions,
    session: Option<Session>,
}

impl LazySession {
    /// Nothing is opened yet.
    pub fn new(runtime: &OrtRuntime, dir: &Path, graph: &Graph, opts: &SessionOptions) -> Self {
        let (runtime, dir, graph, opts) = (runtime.clone(), dir.to_path_buf(), graph.clone(), opts.clone());
        Self { runtime, dir, graph, opts, session: None }
    }

    fn open(&self) -> Result<Session, LoadError> {
        open_session(&self.runtime, &self.dir, &self.graph, &self.opts).map(|(session, _device)| session)
    }

    /// Open the session now (a no-op when it is open).
    pub fn open_now(&mut self) -> Result<(), LoadError> {
        if self.session.is_none() {
            self.session = Some(self.open()?);
        }
        Ok(())
    }

    /// The session, opened now if this is its first use, and the graph's name.
    pub fn get(&mut self) -> Result<(&mut Session, &str), InferenceError> {
        let session = match self.session.take() {
            Some(open) => open,
            None => {
                log::info!("opening {} on first use", self.graph.name);
                let open_error = |source| InferenceError::Open { graph: self.graph.name.clone(), source: Box::new(source) };
                self.open().map_err(open_error)?
            }
        };
        Ok((self.session.insert(session), &self.graph.name))
    }

    /// The session and the graph's name, if the session has been opened.
    pub fn opened(&mut self) -> Option<(&mut Session, &str)> {
        self.session.as_mut().map(|session| (session, self.graph.name.as_str()))
    }
}
