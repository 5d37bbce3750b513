//! Every manifest value the runtime indexes, loops or allocates by, range-checked at load; an
//! error names the field.

use super::{DType, Dim, Manifest, Role, TensorSpec};

/// Bounds far above any model dlm is meant for, low enough that nothing overflows or explodes.
pub const MAX_D: usize = 4096;
pub const MAX_SEQ_LEN: usize = 4096;
pub const MAX_VOCAB: usize = 10_000_000;
pub const MAX_T: usize = 100_000;
pub const MAX_GRAPH_BATCH: usize = 65_536;

fn within(field: &str, value: usize, lo: usize, hi: usize) -> Result<(), String> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field} is {value}; allowed {lo}..={hi}"))
    }
}

pub fn check(m: &Manifest) -> Result<(), String> {
    check_providers(m)?;
    within("model.d", m.model.d, 1, MAX_D)?;
    within("model.seq_len", m.model.seq_len, 3, MAX_SEQ_LEN)?; // START, a word, END
    within("model.vocab_size", m.model.vocab_size, 5, MAX_VOCAB)?; // PAD, UNK, START, END, a word
    within("diffusion.T", m.diffusion.num_timesteps, 2, MAX_T)?;
    if m.diffusion.alpha_bar.len() != m.diffusion.num_timesteps {
        return Err(format!(
            "diffusion.alpha_bar has {} entries, expected T = {}",
            m.diffusion.alpha_bar.len(),
            m.diffusion.num_timesteps
        ));
    }
    if m.embeddings.shape != [m.model.vocab_size, m.model.d] {
        let (v, d) = (m.model.vocab_size, m.model.d);
        return Err(format!("embeddings.shape {:?} is not [vocab_size, d] = [{v}, {d}]", m.embeddings.shape));
    }
    let st = m.special_tokens;
    let ids = [("pad", st.pad), ("unk", st.unk), ("start", st.start), ("end", st.end)];
    for (name, id) in ids {
        within(&format!("special_tokens.{name}"), id as usize, 0, m.model.vocab_size - 1)?;
    }
    if ids.iter().enumerate().any(|(k, a)| ids[..k].iter().any(|b| b.1 == a.1)) {
        return Err(format!("special_tokens {st:?} must be four different ids"));
    }
    for (k, g) in m.graphs.iter().enumerate() {
        for (axis, range) in &g.dynamic_axes {
            if range.min > range.max || range.max == 0 {
                return Err(format!("graphs[{k}].dynamic_axes.{axis}: min {} max {}", range.min, range.max));
            }
        }
        if g.role == Role::Denoiser && g.inputs.iter().any(|i| i.name == "x0_hat_prev") != m.model.self_condition {
            return Err(format!(
                "graphs[{k}] ({}): input x0_hat_prev must be declared exactly when model.self_condition is true",
                g.name
            ));
        }
        if g.role == Role::Denoiser {
            check_denoiser_outputs(&format!("graphs[{k}] ({})", g.name), &g.outputs, m.model.vocab_size)?;
        }
    }
    for (name, c) in &m.controls {
        let field = |f: &str| format!("controls.{name}.{f}");
        if c.labels.is_empty() {
            return Err(format!("{} is empty", field("labels")));
        }
        let batch = c.input.shape.first().copied().unwrap_or(0);
        within(&field("input.shape[0]"), batch, 1, MAX_GRAPH_BATCH)?;
        let width = match name.as_str() {
            "pos" => Some(m.model.seq_len),
            "content" => Some(c.labels.len()),
            "spans" => Some(3),
            "tree" => Some(2 * m.model.seq_len),
            _ => None,
        };
        if let Some(w) = width.filter(|&w| c.input.shape != [batch, w]) {
            return Err(format!("{} is {:?}, expected [{batch}, {w}]", field("input.shape"), c.input.shape));
        }
        within(&field("defaults.steps"), c.defaults.steps, 0, 100)?;
        for (f, v, hi) in [("defaults.lr", c.defaults.lr, 10.0), ("defaults.lambda", c.defaults.lambda, 1e4)] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                return Err(format!("{} is {v}; allowed [0, {hi}]", field(f)));
            }
        }
        for (p, names) in &c.graphs {
            if names.names().is_empty() {
                return Err(format!("{} is empty", field(&format!("graphs.{p}"))));
            }
            for graph in names.names() {
                // a fixed batch of its own, the control input's width otherwise
                let width: Vec<Dim> = c.input.shape.iter().skip(1).map(|&w| Dim::Fixed(w)).collect();
                let declared = m.graphs.iter().find(|g| &g.name == graph);
                let fits = declared.is_some_and(|g| {
                    let batch = g.inputs.first().and_then(|x| x.shape.first());
                    let input = g.inputs.get(2).filter(|i| i.name == c.input.name && i.dtype == c.input.dtype);
                    let control = input.and_then(|i| i.shape.get(1..));
                    matches!(batch, Some(Dim::Fixed(n)) if (1..=MAX_GRAPH_BATCH).contains(n))
                        && control == Some(&width[..])
                });
                if !fits {
                    return Err(format!(
                        "{}: graph {graph:?} must be in graphs with a fixed batch and control input {} {:?} [batch, {:?}]",
                        field(&format!("graphs.{p}")),
                        c.input.name,
                        c.input.dtype,
                        &c.input.shape[1..]
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The `providers` block: options of the providers that take them, with scalar values.
fn check_providers(m: &Manifest) -> Result<(), String> {
    for (provider, options) in &m.providers {
        if !["cuda", "tensorrt"].contains(&provider.as_str()) {
            return Err(format!("providers.{provider}: unknown provider; providers with options: cuda, tensorrt"));
        }
        for (key, value) in options {
            if key.is_empty() || key.contains(char::is_whitespace) || key.contains('\0') {
                return Err(format!("providers.{provider}: key {key:?} must be one word"));
            }
            if value.as_str().is_some_and(|v| v.contains('\0')) {
                return Err(format!("providers.{provider}.{key} holds a NUL character"));
            }
            if !(value.is_string() || value.is_number() || value.is_boolean()) {
                return Err(format!("providers.{provider}.{key} is {value}; allowed a string, number or boolean"));
            }
        }
    }
    Ok(())
}

/// A denoiser gives x0_hat, then optionally `nearest` [batch, seq, K] int64 with a fixed
/// 1 <= K <= vocab_size (the clamping head), nothing else.
fn check_denoiser_outputs(graph: &str, outputs: &[TensorSpec], vocab_size: usize) -> Result<(), String> {
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    match names[..] {
        ["x0_hat"] => Ok(()),
        ["x0_hat", "nearest"] => {
            let nearest = &outputs[1];
            let k = match nearest.shape.get(2) {
                Some(Dim::Fixed(k)) if nearest.shape.len() == 3 => *k,
                _ => return Err(format!("{graph}: output nearest must be [batch, seq, K] with a fixed K")),
            };
            if nearest.dtype != DType::Int64 {
                return Err(format!("{graph}: output nearest must be int64"));
            }
            within(&format!("{graph}: output nearest's K"), k, 1, vocab_size)
        }
        _ => Err(format!("{graph}: outputs {names:?}, expected [\"x0_hat\"] or [\"x0_hat\", \"nearest\"]")),
    }
}
