import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import system_tool
from tools import image as images

# buildah as tools/image.py runs it: no daemon, chroot isolation.
os.environ["BUILDAH_ISOLATION"] = os.environ.get("BUILDAH_ISOLATION") or "chroot"


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """The CPU image, built from this tree exactly as `make image` builds it (about 2 minutes;
    the base rootfs and the wheels are cached under .cache/ for the next run)."""
    if os.geteuid() != 0:  # buildah's chroot isolation and network namespaces
        if os.environ.get("CI") == "true":
            pytest.fail("the image tier runs as root (CI does)")
        pytest.skip("the image tier needs root")
    for tool in ("buildah", "podman", "mmdebstrap", "skopeo", "ip", "sha256sum"):
        system_tool(tool)
    return images.build("cpu", base=None, tool="buildah")


@pytest.fixture(scope="session")
def staged(cpu_image: str) -> Path:
    """The context the CPU image was built from."""
    return images.ROOT / "build" / "image-cpu"


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with nothing but loopback; whatever runs in it is killed afterwards."""
    name = f"gptoss-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    for pid in netns_pids(name):
        os.kill(pid, 9)
    subprocess.run(["ip", "netns", "del", name], check=True)


def netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=True)
    return [int(pid) for pid in out.stdout.split()]


@pytest.fixture
def container(cpu_image: str) -> Iterator[str]:
    """A working container of the CPU image (removed afterwards)."""
    name = f"gptoss-test-{os.getpid()}"
    subprocess.run(["buildah", "rm", name], capture_output=True, check=False)
    subprocess.run(["buildah", "from", "--name", name, cpu_image], capture_output=True, check=True)
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True, check=False)
