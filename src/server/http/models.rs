//! The loaded model as OpenAI's `GET /v1/models` names it: its id is the model directory's
//! name (`models/e2e` is `e2e`), `created` the modification time of its `manifest.json`.

use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::manifest::MANIFEST_FILE;

/// What the OpenAI routes need of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ModelCard {
    pub(super) id: String,
    pub(super) created: u64,
    /// Positions of a sequence (START and END take two).
    pub(super) seq_len: usize,
}

impl ModelCard {
    /// From the server's info (`GET /v1/info`): the model's directory and sequence length.
    pub(super) fn of(info: &Value) -> Self {
        let dir = info["model"]["dir"].as_str().unwrap_or_default();
        let created = std::fs::metadata(Path::new(dir).join(MANIFEST_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let seq_len = info["model"]["seq_len"].as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        Self { id: model_id(Path::new(dir)), created, seq_len }
    }

    /// The most words of a sentence (its positions less START and END).
    pub(super) fn max_words(&self) -> usize {
        self.seq_len.saturating_sub(2)
    }

    pub(super) fn object(&self) -> ModelObject {
        ModelObject { id: self.id.clone(), object: "model".into(), created: self.created, owned_by: "dlm".into() }
    }
}

/// The directory's last component (`.` and `..` resolved first); "dlm" when it has none (`/`).
fn model_id(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    name(dir).or_else(|| std::fs::canonicalize(dir).ok().and_then(|p| name(&p))).unwrap_or_else(|| "dlm".into())
}

/// OpenAI's model object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// The model directory's name, e.g. `e2e`: what `model` must be in `POST /v1/completions`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time of the model's `manifest.json` (when it was exported or copied).
    pub created: u64,
    /// Always `dlm`.
    pub owned_by: String,
}

/// OpenAI's list of models: the one this server serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub(super) fn of(card: &ModelCard) -> Self {
        Self { object: "list".into(), data: vec![card.object()] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_directory_name() {
        assert_eq!(model_id(Path::new("models/e2e")), "e2e");
        assert_eq!(model_id(Path::new("/opt/dlm/models/e2e/")), "e2e");
        let here = std::env::current_dir().unwrap();
        assert_eq!(model_id(Path::new(".")), here.file_name().unwrap().to_string_lossy());
        assert_eq!(model_id(Path::new("/")), "dlm");
        let info = serde_json::json!({"model": {"dir": "models/e2e", "seq_len": 64}});
        let card = ModelCard::of(&info);
        assert_eq!((card.id.as_str(), card.max_words()), ("e2e", 62));
    }
}
