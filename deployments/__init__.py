"""The Ray Serve application: vLLM replicas with NestedFP, the precision ingress, configuration."""
