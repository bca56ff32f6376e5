"""What a release is called: the package version and the image names `make image` tags, which the
chart's defaults and presets name (one spelling, so a built image is the one the chart pulls)."""

from __future__ import annotations

from importlib.metadata import version

VERSION = version("gpt-oss-cluster")
RAY_VERSION = version("ray")  # what the images carry (pinned in pyproject.toml)
IMAGE_REPOSITORY = "ghcr.io/gpt-oss-cluster/gpt-oss-cluster"
# Image variants by lock (images/locks/<variant>.txt): the GPU image carries the plain tag.
VARIANTS = ("gpu", "cpu", "cpu-vllm")


def image_tag(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown image variant {variant!r}; choose one of {VARIANTS}")
    return VERSION if variant == "gpu" else f"{VERSION}-{variant}"


def image_ref(variant: str) -> str:
    return f"{IMAGE_REPOSITORY}:{image_tag(variant)}"
