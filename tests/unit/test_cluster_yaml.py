from __future__ import annotations

import yaml

from tests.helpers.configs import REPO


def test_cluster_yaml_is_a_valid_ray_cluster_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` checks; raises on any error
    nodes = config["available_node_types"]
    assert "GPU" not in nodes[config["head_node_type"]]["resources"]  # a CPU head
    assert any(n["resources"].get("GPU", 0) >= 1 for n in nodes.values())  # GPU workers
    assert (REPO / "cluster.yaml").read_text().startswith("# ray up cluster.yaml")
