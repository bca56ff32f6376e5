"""The air-gapped kit: every byte a site without internet installs, as files, with a manifest.

dist/
  images/gpt-oss-cluster-<tag>.oci.tar   each built image, an OCI archive (skopeo copy it)
  contexts/<variant>/                   each image's offline build context: Dockerfile,
                                        preflight, lock, the lock's wheels and this package's
                                        wheel, vocabulary (rebuild with no index at all; also
                                        the wheelhouse for `pip install --no-index`)
  recipe/                               the Dockerfile, preflight and every lock, for images
                                        not built here (the GPU image on a CPU-only machine)
  charts/gpt-oss-cluster-<version>.tgz  `helm package` of the chart
  o200k_base.tiktoken                   the vocabulary, for a mounted copy
  air-gapped.md                         the steps, from this folder to a serving cluster
  SHA256SUMS                            every file above (`sha256sum -c SHA256SUMS`)

python -m tools.bundle [--out dist] [--variant cpu ...] [--helm .cache/bin/helm]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from cluster.release import image_ref, image_tag
from cluster.vocab import write_vocab
from tools.image import BuildError, builder, copy_recipe, save, stage
from tools.lock import LOCKS, ROOT

MANIFEST = "SHA256SUMS"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(out: Path) -> Path:
    """`<sha256>  <relative path>` for every file under `out`, in the format sha256sum reads."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    lines = [f"{sha256(p)}  {p.relative_to(out).as_posix()}\n" for p in files]
    manifest = out / MANIFEST
    manifest.write_text("".join(lines))
    return manifest


def image_exists(image: str, tool: str) -> bool:
    command = ["docker", "image", "inspect"] if tool == "docker" else ["buildah", "inspect"]
    return subprocess.run([*command, image], capture_output=True, check=False).returncode == 0


def make(out: Path, variants: tuple[str, ...], helm: Path, tool: str = "auto") -> Path:
    """Write the bundle to `out` (replaced) from images already built (`make image`)."""
    tool = builder(tool)
    missing = [image_ref(v) for v in variants if not image_exists(image_ref(v), tool)]
    if missing:
        raise BuildError(f"not built yet: {', '.join(missing)} (run `make image` first)")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for variant in variants:
        save(image_ref(variant), out / "images" / f"gpt-oss-cluster-{image_tag(variant)}.oci.tar")
        stage(variant, out / "contexts" / variant)
    recipe = out / "recipe"
    copy_recipe(recipe)
    (recipe / "locks").mkdir()
    for lock in LOCKS.values():
        shutil.copy2(lock.path, recipe / "locks" / lock.path.name)
    charts = out / "charts"
    charts.mkdir()
    subprocess.run(
        [str(helm), "package", str(ROOT / "helm" / "gpt-oss-cluster"), "-d", str(charts)],
        check=True,
        capture_output=True,
    )
    write_vocab(out)
    shutil.copy2(ROOT / "docs" / "air-gapped.md", out / "air-gapped.md")
    write_manifest(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument(
        "--variant", action="append", choices=sorted(LOCKS), help="images to include (cpu)"
    )
    parser.add_argument("--helm", type=Path, default=ROOT / ".cache" / "bin" / "helm")
    parser.add_argument("--builder", choices=["auto", "docker", "buildah"], default="auto")
    args = parser.parse_args()
    try:
        out = make(args.out, tuple(args.variant or ["cpu"]), args.helm, args.builder)
    except (BuildError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.parent.name != "wheels":
            print(f"{path.stat().st_size / 2**20:10.1f} MiB  {path.relative_to(out)}")
    wheels = list(out.glob("contexts/*/wheels/*.whl"))
    size = sum(p.stat().st_size for p in wheels) / 2**20
    print(f"{size:10.1f} MiB  contexts/*/wheels/ ({len(wheels)} wheels)")
    print(f"{out / MANIFEST}: verify with `cd {out} && sha256sum -c {MANIFEST}`")


if __name__ == "__main__":
    main()
