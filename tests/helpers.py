from typing import Any

from cluster.config import ClusterConfig, deep_merge


def fast_config(time_scale: float = 0.01, **sections: Any) -> ClusterConfig:
    """Defaults with the mock running `1 / time_scale` times faster than an H100, deep-merged."""
    data = deep_merge(ClusterConfig().to_args(), {"engine": {"mock": {"time_scale": time_scale}}})
    return ClusterConfig.model_validate(deep_merge(data, sections))
