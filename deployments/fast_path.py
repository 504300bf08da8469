"""Ray Serve's high-throughput serving path (HAProxy ingress, throughput-optimized Serve) as environment.

Why: with two H200 replicas, the default path (Serve's Python HTTP proxy, an ingress replica, then the
engine replica, every batch of streamed tokens crossing Ray's actor streaming) ran its processes at
1.6-1.8 cores each during an 80 req/s burst and became the app's limit. With HAProxy in front and
Serve's throughput options, the ingress and engine-replica processes stayed under half a core and the
adaptive policy kept every request within its SLOs (docs/BENCHMARKS.md, "Two replicas on Ray Serve's
high-throughput path").

Ray reads these variables when its processes start, so they belong in the environment of ``serve run``
(``make serve FAST_PATH=1``; ``eval "$(python -m deployments.fast_path)"``), not in ``app:main``.
What the mode costs is in README ("Serving path").
"""

from __future__ import annotations

import os
import resource
import shlex

HAPROXY_DEFAULT_MAXCONN = 20000  # Ray's default
# HAProxy asks for 2.5 file descriptors per connection plus 36, and refuses to start if the process limit
# is lower: on the H200 box (a limit of 20,000) Ray's default of 20,000 connections asked for 50,036, and
# 8,000 for 20,036. A tenth of the limit is left spare.
_FDS_PER_CONN = 2.5
_FDS_FIXED = 36
_SPARE = 0.1


def haproxy_maxconn(nofile: int) -> int:
    """The connections HAProxy can be given under a file-descriptor limit of ``nofile``."""
    fit = (nofile * (1 - _SPARE) - _FDS_FIXED) / _FDS_PER_CONN
    return max(1, min(HAPROXY_DEFAULT_MAXCONN, int(fit)))


def fast_path_env(environ: dict[str, str] | None = None, nofile: int | None = None) -> dict[str, str]:
    """The variables to add to ``environ`` (default: this process's) for the high-throughput path; a
    variable the caller already set is left as it is."""
    environ = os.environ if environ is None else environ
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    wanted = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_MAXCONN": str(haproxy_maxconn(nofile)),
    }
    return {k: v for k, v in wanted.items() if k not in environ}


def main() -> None:
    """Print ``export`` lines for a shell to ``eval``."""
    for key, value in fast_path_env().items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
