"""Precision policies and the controller that applies them to vLLM replicas.

Importing the package pulls in no Ray and no torch; the Serve deployment lives in
``policies.controller`` and the replica side in ``policies.agent``.
"""

from policies.base import Policy
from policies.registry import POLICIES, build_policy
from policies.signals import MODES, Decision, Mode, ReplicaStats

__all__ = ["MODES", "POLICIES", "Decision", "Mode", "Policy", "ReplicaStats", "build_policy"]
