"""The CPU image, proven as an image: `gpt-oss-cluster serve` runs from the image's own Python and
site-packages (buildah run), in a network namespace that has nothing but loopback, with the
vocabulary the image carries; the official SDK gets a chat completion and a streamed Responses call
through it; it stops cleanly. Bad inputs fail the build naming the cause, and the air-gapped bundle
verifies against its manifest."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cluster.vocab import VOCAB_SHA256
from tests.helpers import wait_for
from tests.image.conftest import netns_pids
from tools import bundle, image

# The first test also builds the image (a few minutes from an empty .cache/).
pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

CLIENT = """
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0, timeout=60)
chat = client.chat.completions.create(
    model="gpt-oss-120b", reasoning_effort="low",
    messages=[{"role": "user", "content": "Why is the sky blue?"}])
events = list(client.responses.create(
    model="gpt-oss-120b", input="Why is the sky blue?", reasoning={"effort": "low"}, stream=True))
print(json.dumps({
    "content": chat.choices[0].message.content,
    "reasoning": chat.choices[0].message.reasoning,
    "events": [e.type for e in events],
    "output_text": events[-1].response.output_text,
}))
"""


def call(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to its end, output captured as text, whatever its exit code."""
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, **kwargs
    )


def serving_pid(netns: str) -> int | None:
    for pid in netns_pids(netns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if cmdline[:2] == [b"/opt/venv/bin/python3", b"/opt/venv/bin/gpt-oss-cluster"]:
            return pid
    return None


def test_the_image_serves_the_sdk_offline_and_stops_cleanly(container, netns, tmp_path):
    links = call("ip", "netns", "exec", netns, "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    mount = call("buildah", "mount", container).stdout.strip()
    vocab = Path(mount, "opt/gpt-oss-cluster/vocab/o200k_base.tiktoken")
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == VOCAB_SHA256
    log = tmp_path / "serve.log"
    command = [
        "ip",
        "netns",
        "exec",
        netns,
        "buildah",
        "run",
        "--env",
        "GPT_OSS_CLUSTER_GATEWAY__HOST=127.0.0.1",
        container,
        "--",
        "gpt-oss-cluster",
        "serve",
        "--config",
        "/opt/gpt-oss-cluster/serve.yaml",
    ]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "READY" in log.read_text() or server.poll() is not None, 300, "READY")
        assert server.poll() is None, log.read_text()
        pid = serving_pid(netns)
        assert pid, log.read_text()
        # The image's interpreter and site-packages, not the host's.
        root = os.readlink(f"/proc/{pid}/root")
        assert root != "/" and Path(f"/proc/{pid}/root/opt/venv/bin/gpt-oss-cluster").is_file()
        assert os.readlink(f"/proc/{pid}/exe").startswith(root + "/")
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert f"{root}/opt/venv/lib/python3.11/site-packages/" in maps
        assert str(Path(sys.prefix).resolve()) not in maps
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"GPT_OSS_CLUSTER_VOCAB_DIR=/opt/gpt-oss-cluster/vocab" in environ
        url = "http://127.0.0.1:8000/v1"
        client = call("ip", "netns", "exec", netns, sys.executable, "-c", CLIENT, url, timeout=180)
        assert client.returncode == 0, client.stderr
        result = json.loads(client.stdout)
        assert result["content"] and result["reasoning"]
        assert result["events"][0] == "response.created"
        assert result["events"][-1] == "response.completed"
        assert "response.output_text.delta" in result["events"] and result["output_text"]
        os.kill(pid, signal.SIGINT)
        try:
            code = server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running 120 s after SIGINT; its log:\n{log.read_text()}")
        assert code == 0, log.read_text()
        assert "stopped: Serve and Ray shut down" in log.read_text()
        wait_for(lambda: not netns_pids(netns), 30, "every process of the image to exit")
        # The vocabulary came from the image: nothing was derived at run time.
        assert not Path(mount, "home/gptoss/.cache/gpt-oss-cluster").exists()
    finally:
        if server.poll() is None:
            for leftover in netns_pids(netns):
                os.kill(leftover, signal.SIGKILL)
            server.wait(timeout=30)
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)


def test_kuberay_can_start_ray_in_the_image(container):
    """KubeRay runs `bash -lc 'ray start ...'` (a login shell resets PATH) as the chart's uid, and
    probes with wget."""
    script = "command -v ray; command -v wget; id -u; ray --version"
    result = call("buildah", "run", container, "--", "bash", "-lc", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["/opt/venv/bin/ray", "/usr/bin/wget", "10001"]
    assert "ray, version 2.60.0" in result.stdout


def failing_build(context: Path, base: str | None) -> str:
    """Build `context` expecting failure; the build's output."""
    command = image.build_command(context, "localhost/gpt-oss-cluster-bad:test", base, "buildah")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def copy_without_wheels(staged: Path, dest: Path) -> Path:
    shutil.copytree(staged, dest, ignore=shutil.ignore_patterns("*.whl"))
    return dest


@pytest.fixture(scope="module")
def base_without_python(tmp_path_factory) -> str:
    """A base with a shell and nothing else (the host's dash and the libraries it links)."""
    rootfs = tmp_path_factory.mktemp("rootfs")
    dash = Path("/bin/dash").resolve()
    libs = subprocess.run(["ldd", str(dash)], capture_output=True, text=True, check=True).stdout
    for path in [dash] + [Path(w) for w in libs.split() if w.startswith("/")]:
        target = rootfs / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (rootfs / "bin").mkdir(exist_ok=True)
    (rootfs / "bin" / "sh").symlink_to(dash)
    tar = rootfs.parent / "nopython.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(rootfs, arcname=".")
    tag = "localhost/gpt-oss-cluster-nopython:test"
    subprocess.run(["podman", "import", "--quiet", str(tar), tag], capture_output=True, check=True)
    return tag


def test_a_base_without_python_fails_naming_it(staged, base_without_python, tmp_path):
    output = failing_build(copy_without_wheels(staged, tmp_path / "ctx"), base_without_python)
    assert "error: the BASE image has no python3" in output


def test_a_lock_that_does_not_match_pyproject_fails_the_build(staged, tmp_path):
    context = copy_without_wheels(staged, tmp_path / "ctx")
    pyproject = context / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"redis==6.4.0"', '"redis==6.5.0"'))
    output = failing_build(context, image.BASE_IMAGE)
    assert "error: the lock does not match pyproject.toml" in output
    assert "pins redis==6.5.0, lock.txt has 6.4.0" in output


def test_a_missing_vocabulary_fails_the_build(staged, tmp_path):
    context = copy_without_wheels(staged, tmp_path / "ctx")
    (context / "vocab" / "o200k_base.tiktoken").unlink()
    output = failing_build(context, image.BASE_IMAGE)
    assert "error: the vocabulary is missing" in output


def test_the_bundle_verifies_against_its_manifest(cpu_image, tmp_path):
    out = bundle.make(tmp_path / "dist", ("cpu",), image.ROOT / ".cache" / "bin" / "helm")
    archive = out / "images" / "gpt-oss-cluster-0.1.0-cpu.oci.tar"
    with tarfile.open(archive) as oci:
        assert {"oci-layout", "index.json"} <= set(oci.getnames())
    # What docs/air-gapped.md's `skopeo copy oci-archive:...` reads.
    inspect = call("skopeo", "inspect", f"oci-archive:{archive}")
    assert inspect.returncode == 0, inspect.stderr
    labels = json.loads(inspect.stdout)["Labels"]
    assert labels["io.gpt-oss-cluster.variant"] == "cpu"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    for path in (
        "charts/gpt-oss-cluster-0.1.0.tgz",
        "o200k_base.tiktoken",
        "air-gapped.md",
        "recipe/Dockerfile",
        "recipe/locks/gpu.txt",
        "contexts/cpu/lock.txt",
    ):
        assert (out / path).is_file(), path
    verify = call("sha256sum", "-c", "--quiet", "SHA256SUMS", cwd=out)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = {line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert listed == {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS"
    }
    # The wheelhouse installs offline: every file of the lock is there, with its hash.
    wheels, lock = out / "contexts/cpu/wheels", out / "contexts/cpu/lock.txt"
    offline = ["--no-index", "--no-deps", "--require-hashes", "--find-links", wheels]
    download = call(sys.executable, "-m", "pip", "download", *offline, "-r", lock, "-d", tmp_path)
    assert download.returncode == 0, download.stderr
    # A changed byte is caught, and named.
    with (out / "o200k_base.tiktoken").open("ab") as f:
        f.write(b"\n")
    verify = call("sha256sum", "-c", "--quiet", "SHA256SUMS", cwd=out)
    assert verify.returncode != 0 and "o200k_base.tiktoken: FAILED" in verify.stdout
