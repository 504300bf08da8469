"""Ray Serve's high-throughput path is environment for ``serve run``: HAProxy must fit the file-descriptor limit,
and whatever the operator set stays as set."""

import subprocess
import sys

from deployments.fast_path import HAPROXY_DEFAULT_MAXCONN, fast_path_env, haproxy_maxconn


def test_haproxy_connections_fit_the_descriptor_limit_with_a_tenth_spare():
    for nofile in (1024, 20000, 40000):
        conns = haproxy_maxconn(nofile)
        assert 2.5 * conns + 36 <= 0.9 * nofile < 2.5 * (conns + 1) + 36
    assert haproxy_maxconn(20000) < 8000  # 8,000 asked for 20,036 descriptors on the H200 box, and failed


def test_haproxy_connections_stop_at_rays_default_and_never_reach_zero():
    assert haproxy_maxconn(1 << 24) == HAPROXY_DEFAULT_MAXCONN
    assert haproxy_maxconn(8) == 1


def test_the_path_turns_on_haproxy_and_serves_throughput_options():
    env = fast_path_env({}, nofile=20000)
    assert env == {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                   "RAY_SERVE_HAPROXY_MAXCONN": str(haproxy_maxconn(20000))}


def test_variables_the_operator_set_are_left_alone():
    env = fast_path_env({"RAY_SERVE_HAPROXY_MAXCONN": "500", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}, nofile=20000)
    assert env == {"RAY_SERVE_ENABLE_HA_PROXY": "1"}


def test_the_module_prints_exports_a_shell_can_eval():
    out = subprocess.run([sys.executable, "-m", "deployments.fast_path"], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"}).stdout
    script = out + 'printf "%s %s %s" "$RAY_SERVE_ENABLE_HA_PROXY" "$RAY_SERVE_THROUGHPUT_OPTIMIZED" ' \
                   '"$RAY_SERVE_HAPROXY_MAXCONN"'
    got = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert got[:2] == ["1", "1"] and int(got[2]) >= 1
