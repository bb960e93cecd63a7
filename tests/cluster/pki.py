"""Certificates and keys for the test cluster, generated fresh on every `cluster-up`.

The API server serves TLS and authenticates clients by certificate, exactly as a production
control plane does, so RBAC is exercised for real: the admin kubeconfig, the controller
manager, the scheduler and the test kubelet each get a client certificate with their own
identity, and the service-account signing key pair lets the API server mint the tokens that
pods (the operator among them) use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClientIdentity:
    """Who a client certificate says it is: user name (CN) and groups (O)."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


# The identities the cluster's own components and the tests use.
ADMIN = ClientIdentity("admin", "palimpsest-admin", ("system:masters",))
CONTROLLER_MANAGER = ClientIdentity("controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("scheduler", "system:kube-scheduler")
# One process runs every fake node, so it cannot use the per-node system:node:<name>
# identity the Node authorizer expects; it acts with cluster-admin rights instead.
KUBELET = ClientIdentity("kubelet", "palimpsest-test-kubelet", ("system:masters",))
# What the API server presents to the kubelet when proxying `kubectl logs`.
APISERVER_KUBELET_CLIENT = ClientIdentity(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
)
FRONT_PROXY_CLIENT = "front-proxy-client"
# The real kubelet of the containerd node (tests/cluster/node.py), as the Node authorizer
# expects a node to identify itself.
NODE_NAME = "palimpsest-node-0"
NODE = ClientIdentity("node", f"system:node:{NODE_NAME}", ("system:nodes",))
CLIENT_IDENTITIES = (
    ADMIN,
    CONTROLLER_MANAGER,
    SCHEDULER,
    KUBELET,
    APISERVER_KUBELET_CLIENT,
    NODE,
)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _make_ca(
    directory: Path, stem: str, common_name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, KeyPair]:
    key = _new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write_cert(cert, pair.cert)
    _write_key(key, pair.key)
    return cert, key, pair


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName],
    pair: KeyPair,
) -> KeyPair:
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    _write_cert(builder.sign(ca_key, hashes.SHA256()), pair.cert)
    _write_key(key, pair.key)
    return pair


def node_ip() -> str | None:
    """The host's address on its default route: the real node's InternalIP, where its kubelet
    listens so that the API server reaches it for logs, exec and port-forward (a kubelet
    refuses a loopback node IP). None when the host has no route out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # a UDP connect picks the route; nothing is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def _serving_names() -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName(name)
        for name in (
            "localhost",
            NODE_NAME,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    addresses = ["127.0.0.1", "10.96.0.1", *filter(None, [node_ip()])]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in addresses]
    return names


@dataclass(frozen=True)
class ClusterPki:
    """Paths of everything `generate` writes."""

    ca: KeyPair
    apiserver: KeyPair
    kubelet_serving: KeyPair
    kueue_serving: KeyPair
    clients: dict[str, KeyPair]
    front_proxy_client: KeyPair
    service_account_key: Path
    service_account_pub: Path


def _write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = directory / "sa.key", directory / "sa.pub"
    _write_key(key, private)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def generate(directory: Path) -> ClusterPki:
    """Write a CA, the API server and kubelet serving certs, client certs and SA keys."""
    directory.mkdir(parents=True, exist_ok=True)
    serving_names = _serving_names()  # the same names for every serving certificate
    ca_cert, ca_key, ca = _make_ca(directory, "ca", "palimpsest-test-cluster-ca")
    apiserver = _issue(
        ca_cert,
        ca_key,
        _name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        serving_names,
        KeyPair(directory / "apiserver.crt", directory / "apiserver.key"),
    )
    kubelet_serving = _issue(
        ca_cert,
        ca_key,
        _name("palimpsest-test-kubelet"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        serving_names,
        KeyPair(directory / "kubelet-serving.crt", directory / "kubelet-serving.key"),
    )
    kueue_serving = _issue(
        ca_cert,
        ca_key,
        _name("palimpsest-test-kueue"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        serving_names,
        KeyPair(directory / "kueue-serving.crt", directory / "kueue-serving.key"),
    )
    clients = {
        identity.file_stem: _issue(
            ca_cert,
            ca_key,
            _name(identity.user, identity.groups),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            [],
            KeyPair(
                directory / f"{identity.file_stem}.crt", directory / f"{identity.file_stem}.key"
            ),
        )
        for identity in CLIENT_IDENTITIES
    }
    front_proxy = _front_proxy(directory)
    sa_key, sa_pub = _write_service_account_keys(directory)
    return ClusterPki(
        ca, apiserver, kubelet_serving, kueue_serving, clients, front_proxy, sa_key, sa_pub
    )


def _front_proxy(directory: Path) -> KeyPair:
    """The request-header CA and client the aggregation layer uses (and components expect)."""
    cert, key, _ = _make_ca(directory, "front-proxy-ca", "palimpsest-test-front-proxy-ca")
    return _issue(
        cert,
        key,
        _name(FRONT_PROXY_CLIENT),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
        KeyPair(directory / "front-proxy-client.crt", directory / "front-proxy-client.key"),
    )
