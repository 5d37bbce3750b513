//! The syntax-tree control's target: a dependency tree over the words, written `HEAD:LABEL` per
//! word (heads 1-based, 0 for a root, CoNLL's convention; `ROOT` is the root's label), e.g.
//! "2:det 3:nsubj 0:ROOT 3:prep 4:pobj 3:punct". A text of several sentences has a root each.
//! Checked here (every head in range, none its own, no cycle, labels the model knows, ROOT
//! exactly on the roots) and turned into the tree graph's input row.

use crate::error::ControlError;

/// The label of a root (head 0).
pub const ROOT: &str = "ROOT";
/// A position the tree leaves free (the classifier's ignore index).
pub const FREE: i64 = -100;

/// (head, label index) per word.
pub type Tree = Vec<(usize, usize)>;

/// Parse and check `text` against the model's `labels`, for a sequence of `max` words.
pub fn parse(text: &str, labels: &[String], max: usize) -> Result<Tree, ControlError> {
    let bad = |reason: String| ControlError::BadTree { reason, max_words: max, labels: labels.join(" ") };
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.is_empty() {
        return Err(ControlError::Empty { what: "the tree" });
    }
    if parts.len() > max {
        return Err(bad(format!("{} words", parts.len())));
    }
    let n = parts.len();
    let mut tree = Vec::with_capacity(n);
    for (k, part) in parts.iter().enumerate() {
        let word = k + 1;
        let Some((head, label)) = part.split_once(':') else {
            return Err(bad(format!("word {word}: {part:?} is not HEAD:LABEL")));
        };
        let head: usize = head.parse().map_err(|_| bad(format!("word {word}: head {head:?} is not a number")))?;
        if head > n {
            return Err(bad(format!("word {word}: head {head} is past the last word ({n})")));
        }
        if head == word {
            return Err(bad(format!("word {word} is its own head")));
        }
        let index = labels.iter().position(|l| l == label);
        let Some(index) = index else { return Err(bad(format!("word {word}: unknown label {label:?}"))) };
        if (head == 0) != (label == ROOT) {
            return Err(bad(format!("word {word}: {ROOT} is the label of a root (head 0) and only of one")));
        }
        tree.push((head, index));
    }
    for start in 1..=n {
        // following heads from any word reaches a root within n steps, or there is a cycle
        let mut at = start;
        for _ in 0..=n {
            if at == 0 {
                break;
            }
            at = tree[at - 1].0;
        }
        if at != 0 {
            return Err(bad(format!("the heads from word {start} form a cycle")));
        }
    }
    Ok(tree)
}

/// The tree graph's input for a sequence of `seq_len`: each position's head position (word k
/// at k + 1 after START, so head h is position h and a root's is START's, 0), then its label;
/// [`FREE`] at START, END and PAD.
pub fn target_row(tree: &Tree, seq_len: usize) -> Vec<i64> {
    let mut row = vec![FREE; 2 * seq_len];
    for (k, &(head, label)) in tree.iter().enumerate() {
        row[k + 1] = head as i64;
        row[seq_len + k + 1] = label as i64;
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["det", "nsubj", "punct", "ROOT"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_tree_becomes_head_positions_then_labels() {
        let tree = parse("2:det 3:nsubj 0:ROOT 3:punct", &labels(), 10).unwrap();
        assert_eq!(tree, [(2, 0), (3, 1), (0, 3), (3, 2)]);
        let row = target_row(&tree, 8);
        assert_eq!(row[..8], [FREE, 2, 3, 0, 3, FREE, FREE, FREE]);
        assert_eq!(row[8..], [FREE, 0, 1, 3, 2, FREE, FREE, FREE]);
        // two sentences, a root each
        assert!(parse("0:ROOT 1:punct 0:ROOT", &labels(), 10).is_ok());
    }

    #[test]
    fn malformed_trees_are_refused_with_the_reason() {
        for (text, max, says) in [
            ("2:det 3", 10, "word 2: \"3\" is not HEAD:LABEL"),
            ("x:det 0:ROOT", 10, "head \"x\" is not a number"),
            ("5:det 0:ROOT", 10, "head 5 is past the last word (2)"),
            ("1:det 0:ROOT", 10, "word 1 is its own head"),
            ("2:amod 0:ROOT", 10, "unknown label \"amod\""),
            ("2:det 0:nsubj", 10, "ROOT is the label of a root"),
            ("2:ROOT 0:ROOT", 10, "ROOT is the label of a root"),
            ("2:det 1:nsubj 0:ROOT", 10, "the heads from word 1 form a cycle"),
            ("0:ROOT 0:ROOT 0:ROOT", 2, "3 words"),
        ] {
            let message = parse(text, &labels(), max).unwrap_err().to_string();
            assert!(message.contains(says), "{text}: {message}");
            assert!(message.contains("det nsubj punct ROOT"), "the error lists the labels: {message}");
        }
        assert_eq!(parse("  ", &labels(), 10).unwrap_err(), ControlError::Empty { what: "the tree" });
    }
}
