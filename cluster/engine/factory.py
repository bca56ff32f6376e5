"""Build the engine a config asks for."""

from __future__ import annotations

from cluster.config import ClusterConfig, EngineKind
from cluster.engine.base import Engine
from cluster.engine.gatekeeper import Gatekeeper


def build_engine(config: ClusterConfig) -> Engine:
    engine = _engine(config)
    return Gatekeeper(engine, config.router) if config.router.engine_refuses else engine


def _engine(config: ClusterConfig) -> Engine:
    if config.engine.kind is EngineKind.MOCK:
        from cluster.engine.mock import MockEngine

        return MockEngine(config)
    from cluster.engine.vllm import VLLMEngine

    return VLLMEngine(config)
