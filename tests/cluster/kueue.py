"""Kueue in the test cluster: the manager built by build.sh, run on loopback beside the API server.

Kueue admits a queued Job by unsuspending it, and its webhooks (defaulting and validating its
own objects, suspending queued Jobs) must be reachable by the API server over TLS. Its release
manifests assume a Deployment behind a Service; here the manager is a local process, so:

- its webhook configurations point at a loopback URL whose certificate the cluster CA signed;
- the Job webhooks only see Jobs that name a queue (an object selector), so the other tests'
  Jobs never depend on Kueue;
- the one path it hard-codes, the metrics certificate folder /etc/kueue/metrics/certs, is
  supplied in a private mount namespace (an overlay over /etc seen by Kueue alone), so the
  host's /etc is never written;
- the on-demand visibility API is off (it would need an aggregated API server and certificates
  at another fixed path), and only the `batch/job` integration runs.
"""

from __future__ import annotations

import base64
import copy
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "kueue-system"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FRAMEWORKS = ("batch/job",)
FEATURE_GATES = "VisibilityOnDemand=false"
# The API groups whose webhooks Kueue serves here: its own objects, and Jobs.
SERVED_GROUPS = frozenset({"kueue.x-k8s.io", "batch"})
# Where Kueue reads its metrics certificate when it does not manage certificates itself.
METRICS_CERT_DIR = Path("etc/kueue/metrics/certs")
DEBIAN_TOOLS = ("unshare", "mount")


@dataclass(frozen=True)
class KueueLayout:
    """Kueue's files in the cluster folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def webhooks(self) -> Path:
        return self.root / "webhooks.yaml"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def etc_upper(self) -> Path:
        """The upper layer of the overlay over /etc that only Kueue's mount namespace has."""
        return self.root / "etc" / "upper"

    @property
    def etc_work(self) -> Path:
        return self.root / "etc" / "work"


def webhook_configurations(
    manifests: Sequence[Mapping[str, Any]], url_base: str, ca_pem: bytes
) -> list[dict[str, Any]]:
    """Kueue's release webhook configurations, served at `url_base` instead of a Service.

    Keeps the webhooks of SERVED_GROUPS (the others belong to integrations not enabled here and
    would fail every request), names them `kueue-*`, and limits the Job webhooks to Jobs that
    carry a queue name, as `manageJobsWithoutQueueName: false` means anyway.
    """
    ca_bundle = base64.b64encode(ca_pem).decode()
    configurations = []
    for manifest in manifests:
        configuration = copy.deepcopy(dict(manifest))
        configuration["metadata"] = {"name": f"kueue-{manifest['metadata']['name']}"}
        served = []
        for webhook in configuration.get("webhooks", []):
            groups = {group for rule in webhook["rules"] for group in rule["apiGroups"]}
            if not groups <= SERVED_GROUPS:
                continue
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"{url_base}{path}", "caBundle": ca_bundle}
            if groups == {"batch"}:
                webhook["objectSelector"] = {
                    "matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]
                }
            served.append(webhook)
        configuration["webhooks"] = served
        configurations.append(configuration)
    return configurations


def manager_config(ports: Mapping[str, int], certs: Path) -> dict[str, Any]:
    """Kueue's Configuration: loopback ports, our certificates, no leader election."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue-health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports['kueue-metrics']}"},
        "webhook": {"host": "127.0.0.1", "port": ports["kueue-webhook"], "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": list(FRAMEWORKS)},
    }


def write_files(
    layout: KueueLayout,
    ports: Mapping[str, int],
    serving_cert: Path,
    serving_key: Path,
    ca_cert: Path,
    release_webhooks: Path,
) -> None:
    """Kueue's config, certificates (webhook and metrics) and rewritten webhook configurations."""
    metrics_certs = layout.etc_upper / METRICS_CERT_DIR.relative_to("etc")
    for folder in (layout.certs, metrics_certs, layout.etc_work):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (layout.certs, metrics_certs):
        shutil.copyfile(serving_cert, folder / "tls.crt")
        shutil.copyfile(serving_key, folder / "tls.key")
        (folder / "tls.key").chmod(0o600)
    layout.config.write_text(yaml.safe_dump(manager_config(ports, layout.certs), sort_keys=False))
    manifests = [doc for doc in yaml.safe_load_all(release_webhooks.read_text()) if doc]
    url_base = f"https://127.0.0.1:{ports['kueue-webhook']}"
    layout.webhooks.write_text(
        yaml.safe_dump_all(webhook_configurations(manifests, url_base, ca_cert.read_bytes()))
    )


def manager_argv(binary: Path, layout: KueueLayout, kubeconfig: Path) -> list[str]:
    """Kueue in a private mount namespace whose /etc has the metrics certificate folder.

    unshare execs sh, which mounts the overlay and execs Kueue: one pid throughout, so the
    harness stops Kueue by the pid it started. The namespace ends with the process.
    """
    overlay = f"lowerdir=/etc,upperdir={layout.etc_upper},workdir={layout.etc_work}"
    kueue = [
        str(binary),
        f"--config={layout.config}",
        f"--kubeconfig={kubeconfig}",
        f"--feature-gates={FEATURE_GATES}",
    ]
    script = f'mount -t overlay overlay -o {shlex.quote(overlay)} /etc && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "kueue", *kueue]


def missing_tools() -> list[str]:
    return [tool for tool in DEBIAN_TOOLS if shutil.which(tool) is None]
