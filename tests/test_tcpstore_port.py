"""Each vLLM engine on a node gets its own TCPStore port range (vLLM 0.25 starts all at port 100)."""

import os
import random

import pytest

from kernels.vllm_plugin import tcpstore_port


def test_an_unset_base_is_drawn_from_the_range_below_the_ephemeral_ports():
    env: dict[str, str] = {}
    base = tcpstore_port.spread_tcpstore_port(env, random.Random(0))
    assert base == env["VLLM_DP_MASTER_PORT"]
    assert 10000 <= int(base) < 30000 and int(base) + 100 + 32 < 32768


def test_an_operator_set_base_is_kept():
    env = {"VLLM_DP_MASTER_PORT": "29500"}
    assert tcpstore_port.spread_tcpstore_port(env) is None
    assert env["VLLM_DP_MASTER_PORT"] == "29500"


def test_vllm_takes_its_non_dp_master_port_from_the_variable_the_plugin_sets(monkeypatch):
    vllm_envs = pytest.importorskip("vllm.envs")
    monkeypatch.delenv("VLLM_DP_MASTER_PORT", raising=False)
    base = tcpstore_port.spread_tcpstore_port(os.environ)
    assert vllm_envs.VLLM_DP_MASTER_PORT == int(base)
