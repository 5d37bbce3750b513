"""The bundled models/e2e: its manifest validates, its files hash, ONNX matches PyTorch,
and its tokenizer round-trips the held-out split (UNK only for true out-of-vocabulary words)."""
from pathlib import Path

from tokenizers import Tokenizer

from export import config, data, manifest
from export.verify import verify_model_dir

MODEL = Path(__file__).resolve().parents[2] / "models" / "e2e"


def test_manifest_validates_and_files_hash():
    m = manifest.load(MODEL)
    assert m["schema_version"] == manifest.SCHEMA_VERSION
    for entry in manifest.listed_files(m):
        assert manifest.sha256_of(MODEL / entry["file"]) == entry["sha256"]
    size = sum(f.stat().st_size for f in MODEL.iterdir())
    assert size < 25 * 2**20, f"models/e2e is {size} bytes"


def test_bundled_graphs_pass_parity():
    report = verify_model_dir(MODEL)
    guides = {f"guide_{c}{b}.{p}" for c in ("pos", "content", "spans", "tree") for b in ("", ".b4", ".b16")
              for p in ("fp32", "fp16")}
    assert set(report) == {"denoiser.fp32", "denoiser.fp16", "denoiser.int8", "teacher"} | guides


def test_tokenizer_round_trips_the_heldout_split():
    m = manifest.load(MODEL)
    cfg = config.from_dict(m["training"]["config"])
    records = data.read_corpus(cfg.data.files, cfg.data.max_lines)
    train, heldout = data.split_by_mr(records, cfg.data.heldout_fraction, cfg.data.split_seed)
    assert len(heldout) == m["training"]["sentences"]["heldout"]
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    vocab = tok.get_vocab()
    train_words = {w for _, _, text in train for w in data.words_of(tok, text)}
    for _, _, text in heldout:
        words = data.words_of(tok, text)
        decoded = [tok.id_to_token(i) for i in tok.encode(text).ids]
        assert decoded == [w if w in vocab else data.UNK for w in words]
        # UNK only where the word is rare or absent in training (the tokenizer's min_count)
        assert all(w not in vocab for w, d in zip(words, decoded) if d == data.UNK)
        assert all(w in train_words for w in words if w in vocab)
