"""A real text classification set assembled offline: paragraphs of Debian's manual pages
labelled by their section.

Sections (packages `manpages`, `manpages-dev` and whatever else installed pages):
1 user commands, 2 system calls, 3 library functions, 5 file formats, 8 administration.
A paragraph is a run of text lines of the DESCRIPTION section between paragraph macros
(.PP, .P, .LP, .TP, .IP, .SS, .SH), with roff macros and escapes removed: plain English
about what the page documents, no synopsis or #include lines to give the section away.
At most `per_page` paragraphs per page and `per_class` per section, chosen by a seeded
hash, so the set is the same on every machine with the same pages.

    python bench/manpages.py --out /tmp/manpages.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import re
from pathlib import Path

SECTIONS = {
    "1": "user commands", "2": "system calls", "3": "library functions", "5": "file formats", "8": "administration",
}
PARAGRAPH_MACROS = {".PP", ".P", ".LP", ".TP", ".IP", ".SS", ".SH", ".HP", ".sp", ".br", ".in", ".RS", ".RE", ".nf", ".fi"}
FONT_MACROS = re.compile(r"^\.(B|I|BR|RB|BI|IB|IR|RI|SM|SB)\s+")
ESCAPES = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\\((..)|\\\[[^\]]*\]|\\\*(\(..|\[[^\]]*\]|.)|\\[&|^%:,/]|\\s[-+]?\d+")
MIN_WORDS, MAX_WORDS = 12, 90


def _plain(line: str) -> str:
    line = FONT_MACROS.sub("", line)
    line = line.replace("\\-", "-").replace("\\e", "\\").replace('\\"', "").replace("\\ ", " ")
    line = ESCAPES.sub("", line)
    return line.replace('"', "").strip()


def description_paragraphs(source: str) -> list[str]:
    """The DESCRIPTION section's paragraphs of one page's roff source, as plain text."""
    paragraphs: list[str] = []
    current: list[str] = []
    in_description = False
    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith((".SH", ".Sh")):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            in_description = "DESCRIPTION" in line.upper()
            continue
        if not in_description or line.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        macro = line.split(maxsplit=1)[0] if line.startswith(".") else ""
        if macro in PARAGRAPH_MACROS or (macro and not FONT_MACROS.match(line)):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        text = _plain(line)
        if text:
            current.append(text)
    if current and in_description:
        paragraphs.append(" ".join(current))
    return [re.sub(r"\s+", " ", p) for p in paragraphs if MIN_WORDS <= len(p.split()) <= MAX_WORDS]


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def manpage_rows(man_root: Path, per_class: int, per_page: int, seed: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for section, name in SECTIONS.items():
        pages = sorted((man_root / f"man{section}").glob("*.gz"), key=lambda p: _rank(seed, p.name))
        chosen: list[dict[str, str]] = []
        for page in pages:
            try:
                source = gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace")
            except (OSError, EOFError):
                continue
            if source.lstrip().startswith(".so "):
                continue  # an alias of another page
            found = description_paragraphs(source)
            found.sort(key=lambda p: _rank(seed, p))
            chosen.extend({"text": p, "label": name, "page": page.name} for p in found[:per_page])
            if len(chosen) >= per_class:
                break
        rows.extend(chosen[:per_class])
    unique = {row["text"]: row for row in rows}  # a paragraph shared by two pages counts once
    return sorted(unique.values(), key=lambda r: _rank(seed, r["text"]))


def write_manpages_csv(out: Path, man_root: Path = Path("/usr/share/man"), per_class: int = 400, per_page: int = 2,
                       seed: int = 0) -> dict[str, int]:
    rows = manpage_rows(man_root, per_class, per_page, seed)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    if len(counts) < 2:
        raise SystemExit(f"found manual pages of {len(counts)} section(s) under {man_root}: install manpages and "
                         "manpages-dev (apt-get install -y manpages manpages-dev)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label", "page"])
        writer.writeheader()
        writer.writerows(rows)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (text, label, page).")
    parser.add_argument("--man-root", type=Path, default=Path("/usr/share/man"))
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--per-page", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_manpages_csv(args.out, args.man_root, args.per_class, args.per_page, args.seed))


if __name__ == "__main__":
    main()
