"""bench/manpages.py: the text set of bench/quality.py is plain English from the
DESCRIPTION sections of manual pages, labelled by section, the same on every machine."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from bench.manpages import description_paragraphs, write_manpages_csv

PAGE = r""".\" a comment that is not text
.TH OPEN 2 2024-05-02 "Linux man-pages"
.SH NAME
open \- open and possibly create a file
.SH SYNOPSIS
.nf
.B #include <fcntl.h>
.fi
.SH DESCRIPTION
The
.BR open ()
system call opens the file specified by \fIpathname\fP. If the specified file does not
exist, it may optionally be created by \fBopen\fR\(em when the flags say so.
.PP
A short one.
.PP
The return value of
.BR open ()
is a file descriptor, a small nonnegative integer that is an index to an entry in the
process's table of open file descriptors.
.SH SEE ALSO
.BR close (2)
"""


def test_description_paragraphs_are_plain_text_without_macros_or_the_synopsis() -> None:
    paragraphs = description_paragraphs(PAGE)
    assert len(paragraphs) == 2  # "A short one." is under the minimum length
    first = paragraphs[0]
    assert first.startswith("The open () system call opens the file specified by pathname.")
    assert "\\f" not in first and "\\(" not in first and ".BR" not in first
    assert not any("#include" in p or "close (2)" in p for p in paragraphs)


def test_rows_are_labelled_by_section_and_deterministic(tmp_path: Path) -> None:
    for section, count in (("2", 3), ("5", 2)):
        directory = tmp_path / "man" / f"man{section}"
        directory.mkdir(parents=True)
        for i in range(count):
            text = PAGE.replace("open", f"call{section}x{i}")
            (directory / f"page{i}.{section}.gz").write_bytes(gzip.compress(text.encode()))
        (directory / f"alias.{section}.gz").write_bytes(gzip.compress(b".so man2/page0.2\n"))
    out = tmp_path / "a.csv"
    counts = write_manpages_csv(out, tmp_path / "man", per_class=4, per_page=1, seed=0)
    assert counts == {"system calls": 3, "file formats": 2}  # one paragraph per page; aliases skipped
    again = tmp_path / "b.csv"
    write_manpages_csv(again, tmp_path / "man", per_class=4, per_page=1, seed=0)
    assert out.read_text() == again.read_text()
    rows = list(csv.DictReader(out.open()))
    assert {r["label"] for r in rows} == {"system calls", "file formats"} and all(r["text"] for r in rows)
