//! Best of S: of S samples drawn for one output, keep the one that scores best, by the guided
//! controls' classifiers (their summed loss at t = 0 on the final latent), by fluency under the
//! model's autoregressive language model (the mean next-token negative log-likelihood of the
//! sentence, START to END: log lm-score), or by both summed (both are negative log-likelihoods).
//! The language model is reached through [`LanguageModel`] (over ONNX Runtime in `crate::ort`).

use serde::Deserialize;

use crate::error::{InferenceError, RequestError};

/// "Given token sequences, give how unlikely each is": what reranking by fluency needs.
pub trait LanguageModel {
    /// Mean next-token negative log-likelihood (nats) of each sequence, read as
    /// [START, w1..wn, END]: `sequences[k]` holds w1..wn (no special tokens).
    fn mean_nll(&mut self, sequences: &[&[u32]]) -> Result<Vec<f32>, InferenceError>;

    /// Finish the engine's profile, if it keeps one: its files.
    fn end_profiling(&mut self) -> Result<Vec<std::path::PathBuf>, InferenceError> {
        Ok(Vec::new())
    }
}

/// What `rerank` compares samples by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RerankBy {
    /// The guided controls' summed classifier loss at t = 0.
    Controls,
    /// The language model's mean token NLL of the sentence.
    Fluency,
    /// The sum of both.
    Both,
}

impl RerankBy {
    /// What a request that names none gets: the classifiers when it guides one, else fluency.
    pub fn resolve(asked: Option<RerankBy>, has_classifier: bool) -> RerankBy {
        asked.unwrap_or(if has_classifier { RerankBy::Controls } else { RerankBy::Fluency })
    }

    /// Whether the request can be scored this way: a classifier to ask, a language model to ask.
    pub fn check(self, has_classifier: bool, has_lm: bool) -> Result<(), RequestError> {
        if matches!(self, RerankBy::Controls | RerankBy::Both) && !has_classifier {
            return Err(RequestError::RerankWithoutClassifier);
        }
        if matches!(self, RerankBy::Fluency | RerankBy::Both) && !has_lm {
            return Err(RequestError::RerankWithoutLm);
        }
        Ok(())
    }

    pub fn uses_lm(self) -> bool {
        matches!(self, RerankBy::Fluency | RerankBy::Both)
    }
}

/// The score of a sample (lower is better) from its classifier loss and its LM NLL.
pub fn score(by: RerankBy, control_loss: Option<f32>, lm_nll: Option<f32>) -> f32 {
    let (c, f) = (control_loss.unwrap_or(0.0), lm_nll.unwrap_or(0.0));
    match by {
        RerankBy::Controls => c,
        RerankBy::Fluency => f,
        RerankBy::Both => c + f,
    }
}

/// Index of the lowest score (the first of equals; NaN ranks last).
pub fn best(scores: &[f32]) -> usize {
    let key = |s: f32| if s.is_nan() { f32::INFINITY } else { s };
    (0..scores.len()).fold(0, |b, i| if key(scores[i]) < key(scores[b]) { i } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_checks_what_can_score() {
        assert_eq!(RerankBy::resolve(None, true), RerankBy::Controls);
        assert_eq!(RerankBy::resolve(None, false), RerankBy::Fluency);
        assert_eq!(RerankBy::resolve(Some(RerankBy::Both), false), RerankBy::Both);
        assert_eq!(RerankBy::Both.check(false, true), Err(RequestError::RerankWithoutClassifier));
        assert_eq!(RerankBy::Fluency.check(true, false), Err(RequestError::RerankWithoutLm));
        assert_eq!(RerankBy::Controls.check(true, false), Ok(()));
        assert!(RerankBy::Both.uses_lm() && !RerankBy::Controls.uses_lm());
    }

    #[test]
    fn scores_sum_both_and_best_is_the_lowest() {
        assert_eq!(score(RerankBy::Controls, Some(2.0), Some(5.0)), 2.0);
        assert_eq!(score(RerankBy::Fluency, Some(2.0), Some(5.0)), 5.0);
        assert_eq!(score(RerankBy::Both, Some(2.0), Some(5.0)), 7.0);
        assert_eq!(best(&[3.0, 1.0, 2.0, 1.0]), 1);
        assert_eq!(best(&[f32::NAN, 4.0]), 1);
    }
}
