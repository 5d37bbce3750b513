//! `dlm generate --visual`: the sentences redrawn in place at every reported step, as they
//! sharpen out of the noise; on a stdout that is not a terminal, one plain line per sentence
//! and step instead.

use std::io::{self, Write};

use console::{truncate_str, Term};
use dlm::engine::Step;

pub struct Visual {
    term: Term,
    /// Lines of the last frame, to clear before the next (a terminal only).
    drawn: usize,
}

impl Visual {
    pub fn new() -> Self {
        Self { term: Term::stdout(), drawn: 0 }
    }

    /// Draw one step: in place on a terminal (each line cut to its width, so none wraps);
    /// otherwise plain lines `step S/N [k] TEXT`.
    pub fn draw(&mut self, step: &Step<'_>) -> io::Result<()> {
        let label = |k: usize| format!("step {:>4}/{} [{k}] ", step.step, step.of);
        if !self.term.is_term() {
            let mut out = io::stdout().lock();
            for (k, text) in step.texts.iter().enumerate() {
                writeln!(out, "{}{}", label(k), text.as_deref().unwrap_or("(not started)"))?;
            }
            return Ok(());
        }
        self.clear()?;
        let width = usize::from(self.term.size().1).max(20);
        for (k, text) in step.texts.iter().enumerate() {
            let line = format!("{}{}", label(k), text.as_deref().unwrap_or("·"));
            self.term.write_line(&truncate_str(&line, width - 1, "…"))?;
        }
        self.drawn = step.texts.len();
        Ok(())
    }

    /// Clear the last frame (a terminal only), before the final sentences are printed.
    pub fn clear(&mut self) -> io::Result<()> {
        if self.drawn > 0 {
            self.term.clear_last_lines(std::mem::take(&mut self.drawn))?;
        }
        Ok(())
    }
}
