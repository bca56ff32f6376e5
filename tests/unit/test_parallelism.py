import pytest

from cluster.config import ConfigError, presets, validate_config
from cluster.engine.parallelism import engine_placement, kv_capacity_tokens, vllm_engine_args


def vllm(tp=1, pp=1, **extra):
    data = {
        "model": {"path": "/models/gpt-oss-120b"},
        "engine": {
            "kind": "vllm",
            "parallelism": {"tensor_parallel_size": tp, "pipeline_parallel_size": pp},
        },
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return validate_config(data)


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tensor_parallel_replica_owns_one_gpu_bundle_per_rank(tp):
    cfg = vllm(tp, engine_replicas={"num_cpus": 2})
    placement = engine_placement(cfg)
    bundles = placement["placement_group_bundles"]
    assert bundles == [{"GPU": 1, "CPU": 2}] + [{"GPU": 1}] * (tp - 1)
    assert placement["placement_group_strategy"] == "STRICT_PACK"  # TP stays on one node
    assert placement["ray_actor_options"] == {"num_cpus": 2}
    args = vllm_engine_args(cfg)
    assert args["tensor_parallel_size"] == tp
    assert args["distributed_executor_backend"] == "ray"  # workers join the replica's group


def test_pipeline_parallel_spans_nodes():
    cfg = vllm(4, 2)
    placement = engine_placement(cfg)
    assert len(placement["placement_group_bundles"]) == 8
    assert placement["placement_group_strategy"] == "PACK"
    assert vllm_engine_args(cfg)["pipeline_parallel_size"] == 2


def test_single_gpu_and_cpu_replicas_need_no_placement_group():
    tp1 = validate_config({"preset": "gpt-oss-120b-h100-tp1"})
    assert engine_placement(tp1) == {"ray_actor_options": {"num_cpus": 0.0, "num_gpus": 1}}
    assert "distributed_executor_backend" not in vllm_engine_args(tp1)
    cpu = validate_config(
        {"preset": "gpt-oss-120b-h100-tp1", "engine": {"hardware": {"accelerator": "cpu"}}}
    )
    assert engine_placement(cpu) == {"ray_actor_options": {"num_cpus": 0.0}}


def test_engine_args_defaults_then_operator_overrides():
    args = vllm_engine_args(
        vllm(
            2,
            engine={
                "kind": "vllm",
                "parallelism": {"tensor_parallel_size": 2},
                "engine_args": {"max_num_seqs": 64, "disable_log_stats": True},
            },
        )
    )
    assert args["model"] == "/models/gpt-oss-120b"
    assert args["max_num_seqs"] == 64
    assert args["skip_tokenizer_init"] is False  # structured outputs compile against it
    assert args["disable_log_stats"] is True  # the operator's word wins
    assert args["stream_interval"] == 1  # engine.stream_interval, which the mock follows too


@pytest.mark.parametrize("name", [p for p in presets() if p != "local-mock"])
def test_every_preset_is_valid_and_its_context_fits(name):
    cfg = validate_config({"preset": name})
    assert cfg.preset == name and cfg.engine.kind == "vllm"
    assert kv_capacity_tokens(cfg) >= cfg.model.max_model_len
    assert engine_placement(cfg)
    assert vllm_engine_args(cfg)["async_scheduling"] is True


def test_preset_values_yield_to_the_operator():
    cfg = validate_config(
        {"preset": "gpt-oss-120b-h100-tp2", "engine": {"engine_args": {"max_num_seqs": 32}}}
    )
    assert cfg.engine.engine_args["max_num_seqs"] == 32
    assert cfg.engine.engine_args["gpu_memory_utilization"] == 0.9  # rest of the preset kept
    assert cfg.engine.parallelism.tensor_parallel_size == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"engine": {"parallelism": {"tensor_parallel_size": 3}}},
            "does not divide the 64 attention heads",
        ),
        ({"engine": {"parallelism": {"tensor_parallel_size": 16}}}, "exceeds the 8 GPUs of a node"),
        ({"model": {"max_model_len": 131072}}, "do not fit the KV cache.*vllm #23278"),
        ({"preset": "gpt-oss-120b-h200-tp9"}, "unknown preset"),
    ],
)
def test_impossible_layouts_fail_at_start(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"preset": "gpt-oss-120b-h100-tp1"} | overrides)


def test_the_same_context_fits_on_an_h200_or_at_tp2():
    for preset in ("gpt-oss-120b-h200-tp1", "gpt-oss-120b-h100-tp2"):
        assert validate_config({"preset": preset, "model": {"max_model_len": 131072}})
