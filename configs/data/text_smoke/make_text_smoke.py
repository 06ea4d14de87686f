"""Writes the text smoke data next to this file: `reviews.csv` and `tokenizer/`.

    python configs/data/text_smoke/make_text_smoke.py

Short synthetic film reviews over three classes (positive, negative, neutral), each
built from a subject, a verb, an optional adverb, one or two adjectives of its class and
an optional tail. Every word comes from a small fixed vocabulary, so the tokenizer is a
plain WordPiece `vocab.txt` (one word a line) with no unknown words. A seeded share of
rows (NOISE) carries a wrong label: without errors on val_calib, temperature scaling
would rightly refuse to fit (every sample correct), and `ray-app run` would stop there.

Deterministic: the same script writes byte-identical files (tests/unit/test_config.py
checks the shipped files against it).
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS_PER_CLASS = 200
NOISE = 0.06  # share of rows whose label is replaced by another class
# With ~36 flipped rows, a seed can easily put twice its share of them into one split
# (seed 0 does: val_calib would be noisier than val_test, and the temperature fitted on
# it would look wrong there). Seed 2 spreads them in proportion, 5-7% in every split.
SEED = 2
MODEL_MAX_LENGTH = 32

SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the ending", "the soundtrack", "the cast", "the script"]
VERBS = ["was", "is", "felt", "seemed"]
ADVERBS = ["", "very", "really", "quite", "truly", "rather"]
TAILS = ["", "overall", "to me", "at times", "in the end", "for its length"]
ADJECTIVES = {
    "positive": ["great", "wonderful", "brilliant", "lovely", "superb", "moving"],
    "negative": ["awful", "terrible", "boring", "dull", "weak", "painful"],
    "neutral": ["okay", "average", "ordinary", "fair", "passable", "acceptable"],
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def review(rng: random.Random, label: str) -> str:
    first, second = rng.sample(ADJECTIVES[label], 2)
    adjectives = f"{first} and {second}" if rng.random() < 0.3 else first
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(ADVERBS), adjectives, rng.choice(TAILS)]
    return " ".join(w for w in words if w)


def rows() -> list[tuple[str, str]]:
    """(text, label) pairs: ROWS_PER_CLASS distinct texts per class, shuffled, with a
    seeded NOISE share of labels flipped to another class."""
    rng = random.Random(SEED)
    out: list[tuple[str, str]] = []
    for label in ADJECTIVES:
        texts: set[str] = set()
        while len(texts) < ROWS_PER_CLASS:
            texts.add(review(rng, label))
        out += [(text, label) for text in sorted(texts)]
    rng.shuffle(out)
    labels = list(ADJECTIVES)
    return [
        (text, rng.choice([other for other in labels if other != label]) if rng.random() < NOISE else label)
        for text, label in out
    ]


def vocabulary() -> list[str]:
    phrases = SUBJECTS + VERBS + ADVERBS + TAILS + ["and"] + [a for adjs in ADJECTIVES.values() for a in adjs]
    words = sorted({word for phrase in phrases for word in phrase.split()})
    return SPECIAL_TOKENS + words


def tokenizer_config() -> dict[str, object]:
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
    }


def files() -> dict[str, str]:
    """Relative path -> content of every file this script writes."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows())
    return {
        "reviews.csv": table.getvalue(),
        "tokenizer/vocab.txt": "\n".join(vocabulary()) + "\n",
        "tokenizer/tokenizer_config.json": json.dumps(tokenizer_config(), indent=2) + "\n",
    }


def main() -> None:
    for name, content in files().items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        print(f"wrote {path.relative_to(HERE.parents[2])}")
    print(f"{len(vocabulary())} tokens in the vocabulary (model.backbone.config.vocab_size)")


if __name__ == "__main__":
    main()
