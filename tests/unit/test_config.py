import subprocess
import sys

import pytest
import yaml

from cluster.config import (
    API_KEYS_ENV,
    API_KEYS_FILE_ENV,
    ClusterConfig,
    ConfigError,
    load_config,
    validate_config,
    with_secret_env,
)
from cluster.contracts import Effort
from cluster.serve.serve_config import serve_config


def test_defaults_are_valid_and_cover_every_effort():
    cfg = ClusterConfig()
    assert set(cfg.efforts) == set(Effort)
    lows, highs = cfg.efforts[Effort.LOW], cfg.efforts[Effort.HIGH]
    assert 10 <= highs.output_tokens.median_tokens / lows.output_tokens.median_tokens <= 25


def test_yaml_then_environment_overrides(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"served_name": "oss"}, "engine": {"mock": {"time_scale": 0.5}}})
    )
    monkeypatch.setenv("GPT_OSS_CLUSTER_ENGINE__MOCK__TIME_SCALE", "0.25")
    monkeypatch.setenv("GPT_OSS_CLUSTER_AUTH__API_KEYS", '["k1"]')
    cfg = load_config(path)
    assert cfg.model.served_name == "oss"
    assert cfg.engine.mock.time_scale == 0.25
    assert cfg.auth.api_keys[0].get_secret_value() == "k1"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"engine": {"kind": "tpu"}}, "engine.kind"),
        ({"engine": {"mock": {"time_scale": 0}}}, "engine.mock.time_scale"),
        ({"gateway": {"port": 70000}}, "gateway.port"),
        ({"router": {"polcy": "x"}}, "router.polcy"),
        ({"engine": {"kind": "vllm"}}, "model.path"),
        (
            {"model": {"max_model_len": 4096}, "efforts": {"low": {"max_tokens": 8192}}},
            "max_tokens",
        ),
        ({"efforts": {"low": {"max_tokens": 10}}}, "efforts.low"),
        ({"engine_replicas": {"min_replicas": 3, "max_replicas": 2}}, "engine_replicas"),
    ],
)
def test_invalid_config_names_the_field(data, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        validate_config(data)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_serve_config_args_round_trip_with_secrets():
    cfg = validate_config({"auth": {"api_keys": ["s3cret"]}, "gateway": {"port": 9000}})
    doc = serve_config(cfg)
    app = doc["applications"][0]
    assert app["import_path"] == "cluster.serve.app:build_app"
    assert doc["http_options"]["port"] == 9000
    assert validate_config(app["args"]) == cfg
    assert "s3cret" not in str(app["autoscaling_policy"])  # Serve logs a policy's arguments


def test_render_cli_prints_a_serve_config(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "render"], capture_output=True, text=True, check=True
    )
    doc = yaml.safe_load(out.stdout)
    assert validate_config(doc["applications"][0]["args"]) == ClusterConfig()


def test_cli_reports_bad_config_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {replicas: 3}\n")
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "render", "-c", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "engine.replicas" in out.stderr


def test_replica_bounds_map_to_serve_options():
    from cluster.serve.app import _engine_options, _gateway_options

    fixed = validate_config({})
    assert _engine_options(fixed)["num_replicas"] == 1
    assert _gateway_options(fixed)["num_replicas"] == 1
    bounded = validate_config({"engine_replicas": {"min_replicas": 1, "max_replicas": 4}})
    scaling = _engine_options(bounded)["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 4)
    # The application's policy decides both; fixed gateways autoscale between equal bounds so
    # Serve collects the demand they report.
    policy = serve_config(bounded)["applications"][0]["autoscaling_policy"]
    assert policy["policy_function"] == "cluster.serve.autoscaling:ClusterPolicy"
    assert policy["policy_kwargs"]["engine_replicas"]["max_replicas"] == 4
    gateway = _gateway_options(bounded)["autoscaling_config"]
    assert (gateway["min_replicas"], gateway["max_replicas"]) == (1, 1)
    serve_default = validate_config(
        {"engine_replicas": {"max_replicas": 4}, "autoscaling": {"policy": "ongoing_requests"}}
    )
    assert _gateway_options(serve_default)["num_replicas"] == 1


def test_new_engine_replica_bounds_scale_the_engines_without_restarting_a_replica():
    """Serve restarts a deployment whose arguments changed: the bounds stay out of them."""
    from cluster.serve.app import build

    def deployments(config):
        gateway = build(config)._bound_deployment
        engine = gateway.init_args[1]._bound_deployment
        return gateway, engine

    two, four = (
        validate_config({"engine_replicas": {"min_replicas": 1, "max_replicas": n}}) for n in (2, 4)
    )
    for before, after in zip(deployments(two), deployments(four), strict=True):
        assert before.init_args[0] == after.init_args[0]
    assert deployments(four)[1]._deployment_config.autoscaling_config.max_replicas == 4


def test_partial_effort_overrides_keep_the_other_defaults():
    cfg = validate_config({"efforts": {"high": {"ttft_slo_s": 9}}})
    assert cfg.efforts[Effort.HIGH].ttft_slo_s == 9
    assert (
        cfg.efforts[Effort.HIGH].output_tokens == ClusterConfig().efforts[Effort.HIGH].output_tokens
    )
    assert cfg.efforts[Effort.LOW] == ClusterConfig().efforts[Effort.LOW]


def test_api_keys_come_from_a_mounted_secret_file_or_the_environment(tmp_path, monkeypatch):
    base = ClusterConfig()
    assert with_secret_env(base) is base  # nothing set: the config as it was
    monkeypatch.setenv(API_KEYS_ENV, '["from-env"]')
    assert [k.get_secret_value() for k in with_secret_env(base).auth.api_keys] == ["from-env"]
    secret = tmp_path / "api-keys"
    secret.write_text('["k1", "k2"]')
    monkeypatch.setenv(API_KEYS_FILE_ENV, str(secret))  # the mounted file wins
    assert [k.get_secret_value() for k in with_secret_env(base).auth.api_keys] == ["k1", "k2"]
    secret.write_text("k1,k2")
    with pytest.raises(ConfigError, match="JSON list"):
        with_secret_env(base)


def test_a_queue_cap_of_zero_is_refused():
    with pytest.raises(ConfigError, match="max_queued_requests"):
        validate_config({"router": {"max_queued_requests": 0}})


def test_engine_args_may_not_override_a_field_the_rest_of_the_stack_reads():
    with pytest.raises(ConfigError, match=r"stream_interval \(set engine.stream_interval\)"):
        validate_config({"engine": {"engine_args": {"stream_interval": 4, "max_num_seqs": 8}}})
    validate_config({"engine": {"engine_args": {"max_num_seqs": 8}}})  # vLLM's own: passed on
