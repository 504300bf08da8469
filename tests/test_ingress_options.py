"""The ingress runs one replica per engine replica unless told otherwise: every streamed token and
every routing decision goes through an ingress replica's event loop."""

from deployments.builder import ingress_options, llm_config
from deployments.config import AppConfig


def test_the_ingress_gets_one_replica_per_engine_replica_by_default():
    cfg = AppConfig(replicas=3)
    options = ingress_options(cfg, llm_config(cfg))
    assert options["num_replicas"] == 3
    assert "autoscaling_config" not in options  # Serve rejects num_replicas next to autoscaling


def test_an_operator_can_set_the_ingress_replica_count(monkeypatch):
    monkeypatch.setenv("NESTEDFP_INGRESS_REPLICAS", "1")
    cfg = AppConfig(replicas=4)
    assert ingress_options(cfg, llm_config(cfg))["num_replicas"] == 1


def test_the_ingress_reserves_no_cpu_so_a_small_box_fits_the_engines():
    cfg = AppConfig(replicas=2)
    assert ingress_options(cfg, llm_config(cfg))["ray_actor_options"]["num_cpus"] == 0
