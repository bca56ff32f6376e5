"""Build the images with whatever the machine has, from a context that needs no network.

`stage` writes a build context: the Dockerfile and its preflight, the variant's lock, a wheelhouse
holding exactly the lock's wheels (downloaded once into .cache/wheelhouse/, each checked against
its hash) plus this package's wheel, and the verified o200k vocabulary. The same folder is the
air-gapped bundle's recipe: a site rebuilds from it with no index at all. `build` stages and then
runs `docker build` where a Docker engine answers, else `buildah bud` (chroot isolation: it needs
no daemon, and works in a sandbox that forbids new cgroups and rlimits). `base` makes a Debian
bookworm base without any registry (mmdebstrap, imported into buildah's storage with podman).

    python -m tools.image build --variant cpu [--base IMAGE] [--builder auto|docker|buildah]
    python -m tools.image stage --variant gpu --out DIR
    python -m tools.image base
    python -m tools.image save IMAGE FILE.oci.tar
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cluster.release import VERSION, image_ref
from cluster.vocab import VOCAB_SHA256, write_vocab
from tools.lock import LOCKS, ROOT, TORCH_CPU_INDEX, check, normalize, pins

CACHE = ROOT / ".cache"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "wget")
# Named for what it holds, so a changed package list makes a new base instead of reusing the old.
BASE_TAG = hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:12]
BASE_IMAGE = f"localhost/gpt-oss-cluster-base:bookworm-{BASE_TAG}"
# Documentation and translations out of the base (copyright files stay).
SLIM = [
    f"--dpkgopt=path-{rule}=/usr/share/{path}"
    for rule, path in (
        ("exclude", "man/*"),
        ("exclude", "locale/*"),
        ("exclude", "doc/*"),
        ("include", "doc/*/copyright"),
    )
]
# The images' target, whatever the host: pip takes wheels for these tags only.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(36, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
# buildah's default isolation needs a runtime (crun) that sandboxes forbid; chroot works as root.
os.environ["BUILDAH_ISOLATION"] = os.environ.get("BUILDAH_ISOLATION") or "chroot"


class BuildError(RuntimeError):
    pass


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, command)), flush=True)
    return subprocess.run([str(c) for c in command], check=True, **kwargs)


def builder(choice: str = "auto") -> str:
    """docker where a Docker engine answers (`docker info`), else buildah."""
    if choice != "auto":
        return choice
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return "docker"
    if shutil.which("buildah"):
        return "buildah"
    raise BuildError("no image builder: install Docker (with a running engine) or buildah")


def wheelhouse(variant: str, torch_index: str = TORCH_CPU_INDEX) -> Path:
    """.cache/wheelhouse/<variant>: the lock's wheels, hash-checked, and nothing else."""
    lock = LOCKS[variant]
    problems = check(lock.path, ROOT / "pyproject.toml")
    if problems:
        raise BuildError("the lock does not match pyproject.toml: " + "; ".join(problems))
    out = CACHE / "wheelhouse" / variant
    out.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    extra = ["--extra-index-url", torch_index] if lock.torch_cpu else []
    run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        *platforms,
        *extra,
        "-r",
        lock.path,
        "-d",
        out,
    )
    wanted, kept = pins(lock.path.read_text()), set()
    # Newest first: of two files of one pin (another platform tag chosen), the last download wins.
    for wheel in sorted(out.glob("*.whl"), key=lambda w: w.stat().st_mtime, reverse=True):
        name, version = wheel.name.split("-")[:2]
        if wanted.get(normalize(name)) != version or normalize(name) in kept:
            wheel.unlink()  # left from an older lock
        else:
            kept.add(normalize(name))
    return out


def package_wheel(out: Path) -> Path:
    for old in out.glob("gpt_oss_cluster-*.whl"):
        old.unlink()
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, ROOT)
    (wheel,) = out.glob("gpt_oss_cluster-*.whl")
    return wheel


def copy_recipe(out: Path) -> None:
    """The files every build context holds: the Dockerfile, its preflight, the lock checker and
    the pyproject.toml it checks against."""
    out.mkdir(parents=True, exist_ok=True)
    for source in ("images/Dockerfile", "images/preflight.sh", "tools/lock.py", "pyproject.toml"):
        shutil.copy2(ROOT / source, out / Path(source).name)


def stage(variant: str, out: Path, torch_index: str = TORCH_CPU_INDEX) -> Path:
    """A complete, offline build context for `variant` in `out` (replaced)."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "wheels").mkdir(parents=True)
    copy_recipe(out)
    shutil.copy2(LOCKS[variant].path, out / "lock.txt")
    for wheel in wheelhouse(variant, torch_index).glob("*.whl"):
        os.link(wheel, out / "wheels" / wheel.name)  # same filesystem: no copy
    package_wheel(out / "wheels")
    write_vocab(out / "vocab")
    (out / "VARIANT").write_text(variant + "\n")
    return out


def build_args(variant: str, base: str | None) -> list[str]:
    args = {"VARIANT": variant, "VERSION": VERSION, "VOCAB_SHA256": VOCAB_SHA256}
    if base:
        args["BASE"] = base
    return [arg for key, value in args.items() for arg in ("--build-arg", f"{key}={value}")]


def build_command(context: Path, tag: str, base: str | None, tool: str) -> list[str]:
    """The command that builds a staged context (its VARIANT file says which) into `tag`."""
    args = build_args((context / "VARIANT").read_text().strip(), base)
    if tool == "docker":
        return ["docker", "build", *args, "-t", tag, str(context)]
    return ["buildah", "bud", "--layers=false", *args, "-t", tag, str(context)]


def ensure_base() -> str:
    """A Debian bookworm base with Python 3.11, made without a registry (cached in storage)."""
    probe = subprocess.run(["buildah", "inspect", BASE_IMAGE], capture_output=True, check=False)
    if probe.returncode == 0:
        return BASE_IMAGE
    tar = CACHE / "base" / f"bookworm-{BASE_TAG}.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    if not tar.is_file():
        partial = tar.with_suffix(".partial.tar")
        packages = "--include=" + ",".join(BASE_PACKAGES)
        run("mmdebstrap", "--variant=minbase", packages, *SLIM, "bookworm", partial)
        partial.replace(tar)
    run("podman", "import", "--quiet", tar, BASE_IMAGE, stdout=subprocess.DEVNULL)
    return BASE_IMAGE


def build(variant: str, base: str | None, tool: str, tag: str | None = None) -> str:
    tool = builder(tool)
    if base is None and tool == "buildah":
        base = ensure_base()  # no registry here: the Dockerfile's default base cannot be pulled
    tag = tag or image_ref(variant)
    started = time.monotonic()
    context = stage(variant, ROOT / "build" / f"image-{variant}")
    run(*build_command(context, tag, base, tool))
    print(
        f"built {tag} ({variant}, {tool}, base {base or 'the Dockerfile default'}) "
        f"in {time.monotonic() - started:.0f} s"
    )
    return tag


def save(image: str, out: Path, tool: str = "auto") -> Path:
    """The image as an OCI archive (for `skopeo copy oci-archive:... docker://registry/...`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    if builder(tool) == "docker":
        run("docker", "save", "-o", out, image)  # Docker 25+ writes an OCI image layout
    else:
        run("buildah", "push", "--quiet", image, f"oci-archive:{out}:{image}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="stage the context and build the image")
    b.add_argument("--variant", choices=sorted(LOCKS), default="cpu")
    b.add_argument("--base", help="base image (default: Dockerfile's; buildah: local bookworm)")
    b.add_argument("--builder", choices=["auto", "docker", "buildah"], default="auto")
    b.add_argument("--tag")
    s = sub.add_parser("stage", help="write an offline build context")
    s.add_argument("--variant", choices=sorted(LOCKS), default="cpu")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--torch-index", default=TORCH_CPU_INDEX)
    sub.add_parser("base", help="make the Debian bookworm base without a registry")
    v = sub.add_parser("save", help="write an image as an OCI archive")
    v.add_argument("image")
    v.add_argument("out", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "build":
            build(args.variant, args.base, args.builder, args.tag)
        elif args.command == "stage":
            print(stage(args.variant, args.out, args.torch_index))
        elif args.command == "base":
            print(ensure_base())
        else:
            print(save(args.image, args.out))
    except (BuildError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
