"""Entry point: ``serve run app:main`` (optionally ``config=path.yaml`` and field overrides).

Builds the precision-adaptive application from ``deployments.config.AppConfig``: a YAML file
(``config=`` argument or ``$NESTEDFP_CONFIG``), then ``NESTEDFP_*`` environment variables.
"""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application

from deployments.compat import check_serve_llm_imports
from deployments.config import load_config


def main(args: dict[str, Any] | None = None) -> Application:
    args = dict(args or {})
    cfg = load_config(args.pop("config", None), **args)
    check_serve_llm_imports()  # a clear error for a mismatched Ray/vLLM pair, before Ray's own
    from deployments.builder import build_app

    return build_app(cfg)
