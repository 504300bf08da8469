import os
import sys

import pytest
import torch

# Triton picks interpreter or compiler when a function is decorated, and its own language helpers
# are decorated when triton is first imported. On CPU machines, import it once in interpreter mode
# before any test module (vLLM, the app) can, then clear the variable so the processes tests spawn
# (vLLM engines, Ray workers) start normally. tests/test_triton_kernels.py re-decorates our kernels.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass
    finally:
        del os.environ["TRITON_INTERPRET"]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from deployments.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


ADMIN_TOKEN = "test-admin-token"
LIVE_APP_CONFIG = dict(
    replicas=2,
    admin_token=ADMIN_TOKEN,
    # A small running batch so a burst of a few dozen requests builds a real waiting queue.
    engine_kwargs={"max_model_len": 512, "max_num_seqs": 4, "max_num_batched_tokens": 512},
    max_ongoing_requests=16,
    max_queued_requests=64,
    policy={"name": "queue_depth", "params": {"high": 3.0, "low": 0.5, "min_dwell_s": 2.0, "window": 3}},
    precision={"report_interval_s": 0.2, "lease_s": 5.0},
)


@pytest.fixture(scope="session")
def live_app(tiny_model):
    """The real app (Ray Serve, 2 vLLM-CPU replicas of the tiny model) on 127.0.0.1:8000."""
    import ray
    from ray import serve

    import app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(app.main(dict(LIVE_APP_CONFIG)), blocking=False)
    yield "http://127.0.0.1:8000"
    serve.shutdown()
    ray.shutdown()
