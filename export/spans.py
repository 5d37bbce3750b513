"""Phrase spans and dependency trees from spaCy's parse (no constituency parser is available offline).

The "spans" control uses exactly this definition; spans are (i, j, label) over word indices
(0-based, inclusive, words as the tokenizer splits them):
- NP: each of spaCy's noun chunks (a noun with its determiners and pre-modifiers, e.g.
  "a cheap coffee shop");
- PP: the subtree of each token attached as `prep` (a preposition with its object and
  everything below it, e.g. "near Burger King").
"""

SPAN_LABELS = ["NP", "PP"]


def phrase_spans(doc):
    spans = {(c.start, c.end - 1, "NP") for c in doc.noun_chunks}
    spans |= {(t.left_edge.i, t.right_edge.i, "PP") for t in doc if t.dep_ == "prep"}
    return sorted(spans)


def dependency_tree(doc):
    """(head, label) per word: heads 1-based, 0 for the root, which is labelled ROOT (CoNLL)."""
    return [(0 if t.head.i == t.i else t.head.i + 1, "ROOT" if t.head.i == t.i else t.dep_) for t in doc]
