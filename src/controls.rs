//! Controls a request asks for (POS template, content pairs, length, infill template), checked
//! against the manifest's label vocabularies and turned into per-position targets.

use crate::error::ControlError;
use crate::manifest::Manifest;
use crate::text::Vocab;
use crate::tree;

/// What the user asked for, as given on the command line or in a request.
#[derive(Debug, Clone, Default)]
pub struct ControlRequest {
    /// UPOS tags of the words, e.g. "PROPN AUX DET ADJ NOUN".
    pub pos: Option<String>,
    /// `field=value` pairs the sentence must express.
    pub content: Vec<String>,
    /// Number of words.
    pub length: Option<usize>,
    /// Words with `_` for blanks: "The Eagle is a _ _ near _ .".
    pub infill: Option<String>,
    /// "i,j,LABEL" each: words i..j (0-based, inclusive) form a phrase of LABEL (NP, PP).
    pub spans: Vec<String>,
    /// A dependency tree, "HEAD:LABEL" per word (see [`crate::tree`]); fixes the length.
    pub tree: Option<String>,
    /// Which positions a fixed length (length, POS or infill template) holds.
    pub length_hold: LengthHold,
}

/// How a fixed length of N words is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LengthHold {
    /// START, END after word N and PAD after it held; positions 1..=N clamped and rounded to words only.
    #[default]
    Full,
    /// START and END only (Diffusion-LM's reference): the model may write PAD after END, nothing else is forced.
    Ends,
}

/// The most `--span`s in one request (each is one spans-graph call per guidance step).
pub const MAX_SPANS: usize = 16;

/// Per-request targets: what the guidance graphs and the held positions need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Label index per position for the pos graph (`free` where unconstrained), [L].
    pub pos_tags: Option<Vec<i64>>,
    /// 0/1 per content label, [V_content].
    pub content_wanted: Option<Vec<f32>>,
    /// (first word, last word, label index) per requested span, for the spans graph.
    pub spans: Vec<Vec<i64>>,
    /// Head position per position, then label per position, for the tree graph, [2L].
    pub tree: Option<Vec<i64>>,
    /// Token held at each position (START, template words, END, PAD), None = generated.
    pub held: Vec<Option<u32>>,
    /// Positions inside a fixed length: generated there, but always a word.
    pub words_only: Vec<bool>,
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

pub fn plan(request: &ControlRequest, manifest: &Manifest, vocab: &Vocab) -> Result<Plan, ControlError> {
    let seq_len = manifest.model.seq_len;
    let max = seq_len - 2; // START and END take a position each
    let have = || manifest.controls.keys().cloned().collect::<Vec<_>>().join(", ");
    let mut plan = Plan { held: vec![None; seq_len], ..Plan::default() };
    let mut length = request.length;
    if let Some(n) = length {
        if n == 0 {
            return Err(ControlError::Empty { what: "--length" });
        }
        if n > max {
            return Err(ControlError::TooLong { what: "--length", got: n, max, seq_len });
        }
    }
    if let Some(template) = &request.infill {
        let ws = words(template);
        check_len("the infill template", ws.len(), max, seq_len)?;
        if let Some(n) = length.filter(|&n| n != ws.len()) {
            return Err(ControlError::Conflict(format!("--length {n} but the infill template has {} words", ws.len())));
        }
        for (i, w) in ws.iter().enumerate() {
            if *w != "_" {
                let id = vocab.id(w).ok_or_else(|| ControlError::UnknownWord { word: w.to_string() })?;
                plan.held[i + 1] = Some(id);
            }
        }
        length = Some(ws.len());
    }
    if let Some(tags) = &request.pos {
        let control = manifest.controls.get("pos").ok_or_else(|| ControlError::Missing("pos", have()))?;
        let tags = words(tags);
        check_len("the POS template", tags.len(), max, seq_len)?;
        if let Some(n) = length.filter(|&n| n != tags.len()) {
            return Err(ControlError::Conflict(format!(
                "the POS template has {} tags but the length is {n}",
                tags.len()
            )));
        }
        let index = |tag: &str| control.labels.iter().position(|l| l == tag).map(|i| i as i64);
        let word_tags: Vec<&String> =
            control.labels.iter().filter(|l| !matches!(l.as_str(), "START" | "END" | "PAD")).collect();
        let mut row = vec![index("PAD").unwrap_or(0); seq_len];
        row[0] = index("START").unwrap_or(0);
        for (i, tag) in tags.iter().enumerate() {
            row[i + 1] = match index(tag).filter(|_| word_tags.iter().any(|l| l == tag)) {
                Some(v) => v,
                None => {
                    let allowed = word_tags.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
                    return Err(ControlError::UnknownTag { tag: tag.to_string(), allowed });
                }
            };
        }
        row[tags.len() + 1] = index("END").unwrap_or(0);
        plan.pos_tags = Some(row);
        length = Some(tags.len());
    }
    if let Some(text) = &request.tree {
        let control = manifest.controls.get("tree").ok_or_else(|| ControlError::Missing("tree", have()))?;
        let parsed = tree::parse(text, &control.labels, max)?;
        if let Some(n) = length.filter(|&n| n != parsed.len()) {
            return Err(ControlError::Conflict(format!("the tree has {} words but the length is {n}", parsed.len())));
        }
        length = Some(parsed.len());
        plan.tree = Some(tree::target_row(&parsed, seq_len));
    }
    if !request.content.is_empty() {
        let control = manifest.controls.get("content").ok_or_else(|| ControlError::Missing("content", have()))?;
        let mut wanted = vec![0.0f32; control.labels.len()];
        for pair in &request.content {
            let normalized = normalize_pair(pair);
            let i = control.labels.iter().position(|l| *l == normalized).ok_or_else(|| {
                ControlError::UnknownContent { pair: pair.clone(), allowed: control.labels.join(", ") }
            })?;
            wanted[i] = 1.0;
        }
        plan.content_wanted = Some(wanted);
    }
    if request.spans.len() > MAX_SPANS {
        return Err(ControlError::TooManySpans { got: request.spans.len(), max: MAX_SPANS });
    }
    for span in &request.spans {
        let control = manifest.controls.get("spans").ok_or_else(|| ControlError::Missing("spans", have()))?;
        plan.spans.push(parse_span(span, &control.labels, length.unwrap_or(max))?);
    }
    if let Some(n) = length {
        let special = manifest.special_tokens;
        plan.held[0] = Some(special.start);
        plan.held[n + 1] = Some(special.end);
        if request.length_hold == LengthHold::Full {
            plan.held[n + 2..].iter_mut().for_each(|h| *h = Some(special.pad));
            plan.words_only = (0..seq_len).map(|i| (1..=n).contains(&i) && plan.held[i].is_none()).collect();
        }
    }
    Ok(plan)
}

fn parse_span(span: &str, labels: &[String], max_words: usize) -> Result<Vec<i64>, ControlError> {
    let bad = |reason: &str| ControlError::BadSpan {
        span: span.to_string(),
        reason: reason.to_string(),
        max_words,
        labels: labels.join(", "),
    };
    let parts: Vec<&str> = span.split(',').map(str::trim).collect();
    let [i, j, label] = parts[..] else { return Err(bad("it needs three comma-separated parts")) };
    let (i, j) = match (i.parse::<usize>(), j.parse::<usize>()) {
        (Ok(i), Ok(j)) => (i, j),
        _ => return Err(bad("i and j must be word indices")),
    };
    if i > j || j >= max_words {
        return Err(bad("the indices are out of range"));
    }
    let label = labels.iter().position(|l| l == label).ok_or_else(|| bad("unknown label"))?;
    Ok(vec![i as i64, j as i64, label as i64])
}

/// "food = Italian" and "Food=Italian" both mean the label "food=Italian".
fn normalize_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((field, value)) => format!("{}={}", field.trim().to_lowercase(), value.trim()),
        None => pair.trim().to_string(),
    }
}

fn check_len(what: &'static str, got: usize, max: usize, seq_len: usize) -> Result<(), ControlError> {
    if got == 0 {
        return Err(ControlError::Empty { what });
    }
    if got > max {
        return Err(ControlError::TooLong { what, got, max, seq_len });
    }
    Ok(())
}
