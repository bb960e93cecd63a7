"""How the test cluster runs Kueue: its release webhooks rewritten for a manager on loopback."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from tests.cluster import kueue


def release_webhooks() -> list[dict[str, object]]:
    def webhook(name: str, group: str, resource: str, path: str) -> dict[str, object]:
        return {
            "name": name,
            "clientConfig": {"service": {"name": "webhook-service", "path": path}},
            "rules": [{"apiGroups": [group], "resources": [resource], "operations": ["CREATE"]}],
            "failurePolicy": "Fail",
        }

    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "mutating-webhook-configuration"},
            "webhooks": [
                webhook("mjob.kb.io", "batch", "jobs", "/mutate-batch-v1-job"),
                webhook("mpod.kb.io", "", "pods", "/mutate--v1-pod"),
                webhook("mcq.kb.io", "kueue.x-k8s.io", "clusterqueues", "/mutate-cq"),
            ],
        }
    ]


def test_webhooks_point_at_the_loopback_manager_with_the_cluster_ca() -> None:
    (config,) = kueue.webhook_configurations(release_webhooks(), "https://127.0.0.1:9443", b"CA")
    assert config["metadata"] == {"name": "kueue-mutating-webhook-configuration"}
    by_name = {w["name"]: w for w in config["webhooks"]}
    # Pods are not an enabled integration: a webhook nobody serves would fail every pod.
    assert set(by_name) == {"mjob.kb.io", "mcq.kb.io"}
    assert by_name["mcq.kb.io"]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-cq",
        "caBundle": base64.b64encode(b"CA").decode(),
    }
    assert "objectSelector" not in by_name["mcq.kb.io"]


def test_only_jobs_that_name_a_queue_go_through_kueue() -> None:
    (config,) = kueue.webhook_configurations(release_webhooks(), "https://127.0.0.1:1", b"CA")
    (job,) = [w for w in config["webhooks"] if w["name"] == "mjob.kb.io"]
    assert job["objectSelector"] == {
        "matchExpressions": [{"key": kueue.QUEUE_LABEL, "operator": "Exists"}]
    }


def test_the_metrics_certificate_is_seen_only_in_kueue_s_mount_namespace(tmp_path: Path) -> None:
    layout = kueue.KueueLayout(tmp_path / "kueue")
    cert, key, ca = (tmp_path / n for n in ("tls.crt", "tls.key", "ca.crt"))
    for path in (cert, key, ca):
        path.write_text(path.name)
    webhooks = tmp_path / "webhooks.yaml"
    webhooks.write_text(yaml.safe_dump_all(release_webhooks()))
    ports = {"kueue-webhook": 1, "kueue-metrics": 2, "kueue-health": 3}
    kueue.write_files(layout, ports, cert, key, ca, webhooks)
    upper = layout.etc_upper / "kueue" / "metrics" / "certs"
    assert (upper / "tls.crt").read_text() == "tls.crt"
    assert (layout.certs / "tls.key").read_text() == "tls.key"
    config = yaml.safe_load(layout.config.read_text())
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": str(layout.certs)}
    assert config["leaderElection"] == {"leaderElect": False}
    argv = kueue.manager_argv(Path("/bin/kueue"), layout, tmp_path / "kubeconfig")
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert f"upperdir={layout.etc_upper}" in argv[6] and argv[6].endswith('/etc && exec "$@"')
    assert argv[8:] == [
        "/bin/kueue",
        f"--config={layout.config}",
        f"--kubeconfig={tmp_path / 'kubeconfig'}",
        f"--feature-gates={kueue.FEATURE_GATES}",
    ]
