"""control_eval: how well each control classifier reads held-out latents, per band of t (clean to
pure noise), so a weak classifier is visible before it steers anything.

- pos: per-position tag accuracy over START, the words and END;
- content: balanced accuracy (mean of the hit rates on expressed and on absent labels, p > 0.5);
- spans: balanced accuracy on the sentence's real phrases against boundary-shifted, relabelled
  and random non-phrase spans (the same kinds of negatives as training), judged by the pair
  head alone ("spans") and by the whole guidance loss, p = exp(-loss) ("spans, pair + tags");
- span tags: balanced accuracy of the per-position boundary channels (starts, ends, inside).
"""
import torch

from . import data
from .controls import content_targets, pos_labels, span_candidates, span_tags

BANDS = ((0, 100), (100, 500), (500, 1000), (1000, 1500), (1500, 2000))


def _balanced(p, positive):
    hit = (p > 0.5) == positive
    pos, neg = hit[positive], hit[~positive]
    rates = [r.float().mean() for r in (pos, neg) if r.numel()]
    return float(sum(rates) / len(rates)) if rates else float("nan")


@torch.no_grad()
def accuracy_by_band(classifiers, emb, records, tok, diff, tags, values, span_labels, seq_len, seed=0):
    """{control: {"lo-hi": accuracy}} on `records` (held-out), one random t per sentence in each band."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([data.encode_ids(tok, r["words"], seq_len) for r in records])
    pos_y = pos_labels(records, tags, seq_len)
    wanted, _ = content_targets(records, values, seq_len)
    spans, target = span_candidates(records, span_labels, seq_len, gen)
    pos, content, span = (classifiers[k][0] for k in ("pos", "content", "spans"))
    boundary = span_tags(records, span_labels, seq_len)
    words = (ids != 0)[:, :, None, None].expand_as(boundary)
    out = {"pos": {}, "content": {}, "spans": {}, "spans, pair + tags": {}, "span tags": {}}
    for lo, hi in BANDS:
        t = torch.randint(lo, hi, (len(records),), generator=gen)
        x_t = diff.q_sample(emb[ids], t, torch.randn(len(records), seq_len, emb.shape[1], generator=gen))
        band = f"{lo}-{hi}"
        real = pos_y != pos_y.new_tensor(tags.index("PAD"))
        out["pos"][band] = float((pos(x_t, t).argmax(-1) == pos_y)[real].float().mean())
        out["content"][band] = _balanced(content.log_p_expressed(x_t, t).exp(), wanted > 0)
        logits = span(x_t, t, spans)
        p = torch.sigmoid(torch.gather(logits, 2, spans[:, :, 2:3])[:, :, 0])
        valid = target >= 0
        out["spans"][band] = _balanced(p[valid], target[valid] > 0)
        whole = torch.stack([span.loss(x_t, t, spans[:, k]) for k in range(spans.shape[1])], dim=1)
        out["spans, pair + tags"][band] = _balanced(torch.exp(-whole)[valid], target[valid] > 0)
        tagged = torch.sigmoid(span._tags(span.encoder(x_t, t)))
        out["span tags"][band] = _balanced(tagged[words], boundary[words] > 0)
    return out
