//! Minimum Bayes risk decoding: of S samples for the same controls, keep the one with the
//! lowest expected risk, risk = negative sentence BLEU against the other samples.

use std::collections::HashMap;

/// Sentence BLEU-4 with add-one smoothing for n > 1 (Lin and Och 2004) and brevity penalty.
pub fn sentence_bleu(hypothesis: &[String], reference: &[String]) -> f64 {
    if hypothesis.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let mut log_precision = 0.0;
    for n in 1..=4 {
        let hyp = ngrams(hypothesis, n);
        let refs = ngrams(reference, n);
        let total: usize = hyp.values().sum();
        let matched: usize = hyp.iter().map(|(g, c)| (*c).min(refs.get(g).copied().unwrap_or(0))).sum();
        let smooth = if n == 1 { 0.0 } else { 1.0 };
        if matched as f64 + smooth == 0.0 {
            return 0.0;
        }
        log_precision += ((matched as f64 + smooth) / (total as f64 + smooth)).ln() / 4.0;
    }
    let (h, r) = (hypothesis.len() as f64, reference.len() as f64);
    let brevity = if h >= r { 0.0 } else { 1.0 - r / h };
    (brevity + log_precision).exp()
}

fn ngrams(words: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for gram in words.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// Index of the candidate with the highest mean BLEU against the others (lowest risk).
pub fn select(candidates: &[Vec<String>]) -> usize {
    let gain = |i: usize| -> f64 {
        (0..candidates.len()).filter(|&j| j != i).map(|j| sentence_bleu(&candidates[i], &candidates[j])).sum()
    };
    (0..candidates.len())
        .map(|i| (i, gain(i)))
        .fold((0, f64::NEG_INFINITY), |b, (i, g)| if g > b.1 { (i, g) } else { b })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn identical_sentences_score_one_and_disjoint_ones_zero() {
        let a = words("The Eagle is a coffee shop near Burger King .");
        assert!((sentence_bleu(&a, &a) - 1.0).abs() < 1e-12);
        assert_eq!(sentence_bleu(&a, &words("xx yy zz")), 0.0);
        assert!(sentence_bleu(&words("The Eagle is"), &a) < sentence_bleu(&a[..8], &a));
    }

    #[test]
    fn picks_the_consensus_sample() {
        let c = [
            words("The Eagle is a pub near Burger King ."),
            words("The Eagle is a pub near the river ."),
            words("Zizzi serves cheap Italian food ."),
            words("The Eagle is a pub near Burger King in the city centre ."),
        ];
        assert_eq!(select(&c), 0);
    }
}
