"""The real test node's generated files: the pause image archive and the runtime configs."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

from tests.cluster import node, pki


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {info.name: info for info in tar.getmembers()}


def read(archive: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def blob(archive: bytes, digest: str) -> bytes:
    data = read(archive, f"blobs/sha256/{digest.removeprefix('sha256:')}")
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_oci_archive_is_a_consistent_named_image() -> None:
    archive = node.oci_archive("localhost/x/pause:1", {"pause": b"\x7fELF"}, ["/pause"])
    assert json.loads(read(archive, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    (descriptor,) = json.loads(read(archive, "index.json"))["manifests"]
    assert descriptor["annotations"]["io.containerd.image.name"] == "localhost/x/pause:1"
    manifest = json.loads(blob(archive, descriptor["digest"]))
    config = json.loads(blob(archive, manifest["config"]["digest"]))
    (layer_ref,) = manifest["layers"]
    layer = blob(archive, layer_ref["digest"])
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/pause"]
    pause = members(layer)["pause"]
    assert pause.mode == 0o755 and pause.size == 4
    assert node.oci_archive("localhost/x/pause:1", {"pause": b"\x7fELF"}, ["/pause"]) == archive


def test_runtime_configs_keep_everything_under_the_node_folder(tmp_path: Path) -> None:
    layout = node.NodeLayout(tmp_path / "node")
    config = tomllib.loads(node.containerd_config(layout))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True and cri["sandbox_image"] == node.PAUSE_IMAGE
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"BinaryName": node.RUNC, "SystemdCgroup": False}
    for path in (
        config["root"],
        config["state"],
        config["grpc"]["address"],
        cri["cni"]["conf_dir"],
    ):
        assert Path(path).is_relative_to(layout.root)
    serving = pki.KeyPair(tmp_path / "s.crt", tmp_path / "s.key")
    kubelet = node.kubelet_config(layout, tmp_path / "ca.crt", serving, 12345, "192.0.2.7")
    assert kubelet["registerWithTaints"] == [node.TAINT]
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{layout.socket}"
    assert (kubelet["address"], kubelet["port"], kubelet["readOnlyPort"]) == ("192.0.2.7", 12345, 0)
    ipam = node.cni_config(layout)["plugins"][0]["ipam"]  # type: ignore[index]
    assert Path(ipam["dataDir"]).is_relative_to(layout.root)
    args = node.kubelet_args(layout, Path("/bin"), "192.0.2.7")
    assert "--node-ip=192.0.2.7" in args
    assert f"--root-dir={layout.kubelet_root}" in args
    assert f"--hostname-override={node.NAME}" in args
