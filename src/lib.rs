//! dlm: an edge runtime for Diffusion-LM on ONNX Runtime.
//!
//! Layout: [`manifest`] (model directory description), [`ortlib`] (the ONNX Runtime library),
//! [`session`] (execution providers, the denoiser session), [`schedule`] (noise schedule and
//! respacing), [`sampler`] (reverse diffusion over the [`sampler::Denoiser`] trait),
//! [`embeddings`] (clamping and rounding), [`text`] (tokenizer), [`model`] (a loaded model
//! directory) and [`generate`] (requests); [`protocol`] and [`server`] are `dlm serve`.

pub mod controls;
pub mod embeddings;
pub mod error;
pub mod generate;
pub mod guidance;
pub mod manifest;
pub mod mbr;
pub mod model;
pub mod ortlib;
pub mod overrides;
pub mod profile;
pub mod protocol;
pub mod sampler;
pub mod schedule;
pub mod server;
pub mod session;
pub mod text;
