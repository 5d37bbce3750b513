//! Token ids <-> text through `tokenizer.json` (the same file the Python side wrote).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::LoadError;
use crate::manifest::SpecialTokens;

pub struct Vocab {
    tokenizer: Tokenizer,
    special: SpecialTokens,
}

impl Vocab {
    pub fn load(path: &Path, special: SpecialTokens) -> Result<Self, LoadError> {
        let tokenizer =
            Tokenizer::from_file(path).map_err(|source| LoadError::Tokenizer { path: path.to_path_buf(), source })?;
        Ok(Self { tokenizer, special })
    }

    /// A vocabulary of `words` (id = position) and no other rules: the tests' fake models.
    #[cfg(test)]
    pub(crate) fn of_words(words: &[&str], special: SpecialTokens) -> Self {
        use tokenizers::models::wordlevel::WordLevel;
        let vocab = words.iter().enumerate().map(|(id, w)| (w.to_string(), id as u32)).collect();
        let unk = words[special.unk as usize].to_string();
        let model = WordLevel::builder().vocab(vocab).unk_token(unk).build().expect("a word-level vocabulary");
        Self { tokenizer: Tokenizer::new(model), special }
    }

    pub fn size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// PAD, START and END are stripped; UNK stays visible.
    pub fn content_ids<'a>(&self, ids: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
        let s = self.special;
        ids.iter().copied().filter(move |&i| i != s.pad && i != s.start && i != s.end)
    }

    /// The id of a word, if it is in the vocabulary (special tokens excluded).
    pub fn id(&self, word: &str) -> Option<u32> {
        let s = self.special;
        self.tokenizer.token_to_id(word).filter(|&i| i != s.pad && i != s.start && i != s.end && i != s.unk)
    }

    pub fn token(&self, id: u32) -> String {
        self.tokenizer.id_to_token(id).unwrap_or_else(|| format!("<{id}>"))
    }

    /// The words of a generated sequence joined by single spaces.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.content_ids(ids).map(|i| self.token(i)).collect::<Vec<_>>().join(" ")
    }
}
