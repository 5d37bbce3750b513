//! dlm: an edge runtime for Diffusion-LM on ONNX Runtime.
//!
//! Layers, each depending only on those below it:
//! - [`error`]: every error enum (a leaf).
//! - [`manifest`] (the model directory's description), [`schedule`] (noise schedule and
//!   respacing), [`embeddings`] (clamping and rounding), [`text`] (tokenizer), [`mbr`], [`rerank`].
//! - [`sampler`]: reverse diffusion over its contracts, `Denoiser` and `Guide`; knows no engine.
//! - [`ort`]: ONNX Runtime (library, sessions, providers) implementing those contracts.
//! - [`controls`] and [`overrides`] (what a request asks for), [`model`] (the sampler's
//!   contracts and what they serve; loaded on ONNX Runtime), [`generate`] (requests), [`engine`]
//!   (the one loop that schedules them: `dlm generate` is its one-job use), [`profile`];
//!   [`protocol`] and [`server`] are `dlm serve`.

pub mod controls;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod generate;
pub mod manifest;
pub mod mbr;
pub mod model;
pub mod ort;
pub mod overrides;
pub mod profile;
pub mod protocol;
pub mod rerank;
pub mod sampler;
pub mod schedule;
pub mod server;
pub mod text;
pub mod tree;
