import os

import pytest

from cluster import vocab


def test_builds_the_verified_file_from_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv(vocab.VOCAB_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    directory = vocab.ensure_vocab()
    assert directory == tmp_path
    assert vocab._sha256(tmp_path / vocab.VOCAB_FILE) == vocab.VOCAB_SHA256
    assert os.environ["TIKTOKEN_ENCODINGS_BASE"] == str(tmp_path)


def test_explicit_directory_without_the_file_names_the_fix(tmp_path):
    with pytest.raises(vocab.VocabError, match="o200k_base.tiktoken"):
        vocab.ensure_vocab(tmp_path)


def test_corrupted_file_is_rejected(tmp_path):
    (tmp_path / vocab.VOCAB_FILE).write_text("not a vocabulary\n")
    with pytest.raises(vocab.VocabError, match="sha256"):
        vocab.ensure_vocab(tmp_path)
