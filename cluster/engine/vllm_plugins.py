"""vLLM plugins, loaded by vLLM itself in every engine and worker process (entry points)."""


def init_amx() -> None:
    """On CPUs, request AMX tile permission before vLLM's bf16 attention kernels use it
    (otherwise the first such kernel dies with SIGILL, exit code -4)."""
    import torch

    if not torch.cuda.is_available() and hasattr(torch.cpu, "_init_amx"):
        torch.cpu._init_amx()
