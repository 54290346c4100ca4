"""Private CAs and client certificates through the real `bale` command, against real
docker-registry processes serving HTTPS with certificates made here: one with a server
certificate from a self-made CA, one that also requires a client certificate
(`http.tls.clientcas`). Both serve the storage of a plain registry the test image is pushed to.

Trust comes from `--src-cert-dir` / `--dest-cert-dir` / `--cert-dir`, a spec's `cert-dir`, or
`~/.config/containers/certs.d/HOST:PORT/` (HOME points into the test's directory: nothing is
written under /etc)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.bed.cli import isolated_env, run_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.registry import FilesystemStorage, RegistryServer

pytestmark = pytest.mark.integration


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _issue(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `name`, signed by `issuer` (self-signed without one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


@dataclass(frozen=True)
class Bed:
    tls: RegistryServer
    """HTTPS, server certificate from the private CA (chain sent with the root)."""
    mtls: RegistryServer
    """The same, and a client certificate from the client CA is required."""
    image: BuiltImage
    """Pushed as `certs/app:1`, readable from both."""
    ca_dir: Path
    """ca.crt only."""
    client_dir: Path
    """ca.crt, and client.cert + client.key."""
    root: Path


@pytest.fixture(scope="module")
def bed(image_factory: ImageFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("certs")
    ca = _issue("bale test CA", None, ca=True)
    server_cert, server_key = _issue("bale test registry", ca, server=True)
    client_ca = _issue("bale test client CA", None, ca=True)
    client_cert, client_key = _issue("bale test client", client_ca)
    pki = root / "pki"
    pki.mkdir()
    (pki / "server.pem").write_bytes(_pem(server_cert) + _pem(ca[0]))
    (pki / "server.key").write_bytes(_pem_key(server_key))
    (pki / "clients.pem").write_bytes(_pem(client_ca[0]))
    ca_dir, client_dir = root / "ca-only", root / "with-client"
    for directory in (ca_dir, client_dir):
        directory.mkdir()
        (directory / "ca.crt").write_bytes(_pem(ca[0]))
    (client_dir / "client.cert").write_bytes(_pem(client_cert))
    (client_dir / "client.key").write_bytes(_pem_key(client_key))

    storage = FilesystemStorage(root / "data")
    tls_config = {"certificate": str(pki / "server.pem"), "key": str(pki / "server.key")}
    plain = RegistryServer(root / "plain", storage=storage).start()
    tls = RegistryServer(
        root / "tls", storage=storage, extra_config={"http": {"tls": tls_config}}
    ).start()
    mtls_config = {**tls_config, "clientcas": [str(pki / "clients.pem")]}
    mtls = RegistryServer(
        root / "mtls", storage=storage, extra_config={"http": {"tls": mtls_config}}
    ).start()
    try:
        image = image_factory.build_and_push(
            f"{plain.host}/certs/app:1", layers=[LayerSpec(200_000, seed=1301)]
        )
        yield Bed(tls, mtls, image, ca_dir, client_dir, root)
    finally:
        for server in (plain, tls, mtls):
            server.stop()


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """An isolated environment with HOME (and so ~/.config/containers/certs.d) in the test's
    tree."""
    home.mkdir(parents=True, exist_ok=True)
    return isolated_env(home.parent, HOME=str(home), **extra)


def _archive(
    server: RegistryServer, to: str, cert_dir: str, home: Path
) -> subprocess.CompletedProcess[str]:
    """`bale archive` of the test image on `server` into `to`, trusting `--src-cert-dir`."""
    return run_bale(
        "archive", _image(server), "--to", to, "--src-cert-dir", cert_dir, env=home_env(home)
    )


def _image(server: RegistryServer) -> str:
    return f"docker://{server.host}/certs/app:1"


def test_private_ca_refused_without_trust_names_host_problem_and_option(
    bed: Bed, tmp_path: Path
) -> None:
    run = run_bale(
        "archive", _image(bed.tls), "--to", str(tmp_path / "a"), env=home_env(tmp_path / "home")
    )
    assert run.returncode == 1, run.stderr
    err = run.stderr
    assert f"TLS error talking to {bed.tls.host}" in err
    assert "certificate verify failed: self-signed certificate in certificate chain" in err
    assert "--src-cert-dir" in err and "--src-tls-verify=false" in err
    assert err.index("--src-cert-dir") < err.index("--src-tls-verify=false")
    assert "_Quiet" not in err and "Traceback" not in err

    inspect = run_bale("inspect", _image(bed.tls), env=home_env(tmp_path / "home"))
    assert inspect.returncode == 1
    assert "--cert-dir" in inspect.stderr and "--src-cert-dir" not in inspect.stderr


def test_archive_with_src_cert_dir_then_restore_with_dest_cert_dir(
    bed: Bed, tmp_path: Path
) -> None:
    home, store = tmp_path / "home", tmp_path / "store"
    run = _archive(bed.tls, str(store), str(bed.ca_dir), home)
    assert run.returncode == 0, run.stderr
    assert bed.image.digest in run.stdout + run.stderr

    target = f"docker://{bed.tls.host}/certs/restored:1"
    refused = run_bale("restore", _image(bed.tls), target, "--from", str(store), env=home_env(home))
    assert refused.returncode == 1
    assert "--dest-cert-dir" in refused.stderr and "--dest-tls-verify=false" in refused.stderr

    restored = run_bale(
        "restore",
        _image(bed.tls),
        target,
        "--from",
        str(store),
        env=home_env(home, BALE_DEST_CERT_DIR=str(bed.ca_dir)),
    )
    assert restored.returncode == 0, restored.stderr
    inspected = run_bale(
        "inspect", "--raw", target, "--cert-dir", str(bed.ca_dir), env=home_env(home)
    )
    assert inspected.returncode == 0, inspected.stderr
    digest = json.loads(
        run_bale("inspect", target, "--cert-dir", str(bed.ca_dir), "-n", env=home_env(home)).stdout
    )["Digest"]
    assert digest == bed.image.digest


def test_trusted_through_containers_certs_d_and_explicit_dir_replaces_it(
    bed: Bed, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    certs_d = home / ".config" / "containers" / "certs.d" / bed.tls.host
    certs_d.mkdir(parents=True)
    (certs_d / "ca.crt").write_bytes((bed.ca_dir / "ca.crt").read_bytes())

    run = run_bale("archive", _image(bed.tls), "--to", str(tmp_path / "a"), env=home_env(home))
    assert run.returncode == 0, run.stderr
    tags = run_bale("list-tags", f"docker://{bed.tls.host}/certs/app", env=home_env(home))
    assert tags.returncode == 0 and json.loads(tags.stdout)["Tags"] == ["1"]

    empty = tmp_path / "empty"
    empty.mkdir()
    replaced = _archive(bed.tls, str(tmp_path / "b"), str(empty), home)
    assert replaced.returncode == 1
    assert f"certificates read from {empty}" in replaced.stderr


def test_spec_cert_dir_is_used(bed: Bed, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"{bed.tls.host}:\n  images:\n    certs/app: ['1']\n  cert-dir: {bed.ca_dir}\n")
    run = run_bale("run", str(spec), "--to", str(tmp_path / "a"), env=home_env(tmp_path / "home"))
    assert run.returncode == 0, run.stderr
    assert "not supported" not in run.stderr


def test_client_certificate_required(bed: Bed, tmp_path: Path) -> None:
    home = tmp_path / "home"
    refused = run_bale(
        "copy",
        _image(bed.mtls),
        f"oci-archive:{tmp_path / 'no.tar'}",
        "--src-cert-dir",
        str(bed.ca_dir),
        env=home_env(home),
    )
    assert refused.returncode == 1
    assert f"TLS error talking to {bed.mtls.host}" in refused.stderr
    assert "requires a client certificate and none is set up" in refused.stderr
    assert "--src-cert-dir" in refused.stderr
    assert "Traceback" not in refused.stderr

    out = tmp_path / "app.tar"
    copied = run_bale(
        "copy",
        _image(bed.mtls),
        f"oci-archive:{out}",
        "--src-cert-dir",
        str(bed.client_dir),
        env=home_env(home),
    )
    assert copied.returncode == 0, copied.stderr
    assert out.stat().st_size > 200_000

    store = tmp_path / "store"
    archived = _archive(bed.mtls, str(store), str(bed.client_dir), home)
    assert archived.returncode == 0, archived.stderr
    target = f"docker://{bed.mtls.host}/certs/mtls-restored:1"
    restored = run_bale(
        "restore",
        _image(bed.mtls),
        target,
        "--from",
        str(store),
        "--dest-cert-dir",
        str(bed.client_dir),
        env=home_env(home),
    )
    assert restored.returncode == 0, restored.stderr


def test_half_a_client_pair_is_bad_input(bed: Bed, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "client.cert").write_bytes((bed.client_dir / "client.cert").read_bytes())
    run = _archive(bed.tls, str(tmp_path / "a"), str(broken), tmp_path / "home")
    assert run.returncode == 2
    assert "client certificate without its key client.key" in run.stderr
    assert not (tmp_path / "a").exists()


def test_sync_between_private_ca_registries(bed: Bed, tmp_path: Path) -> None:
    home = tmp_path / "home"
    dest = f"docker://{bed.mtls.host}/synced"
    args = ("sync", _image(bed.tls), dest, "--src-cert-dir", str(bed.ca_dir))
    untrusted = run_bale(*args, env=home_env(home))
    assert untrusted.returncode == 1
    assert "certificate verify failed" in untrusted.stderr
    assert "--dest-cert-dir" in untrusted.stderr and "--src-cert-dir" not in untrusted.stderr
    refused = run_bale(*args, "--dest-cert-dir", str(bed.ca_dir), env=home_env(home))
    assert refused.returncode == 1
    assert "requires a client certificate" in refused.stderr
    synced = run_bale(*args, "--dest-cert-dir", str(bed.client_dir), env=home_env(home))
    assert synced.returncode == 0, synced.stderr
    assert bed.image.digest in synced.stdout


def test_spec_cert_dir_missing_is_bad_input(bed: Bed, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    missing = tmp_path / "nowhere"
    spec.write_text(f"{bed.tls.host}:\n  images:\n    certs/app: ['1']\n  cert-dir: {missing}\n")
    run = run_bale("run", str(spec), "--to", str(tmp_path / "a"), env=home_env(tmp_path / "home"))
    assert run.returncode == 2
    assert f"{spec}:1: cert-dir: certificate directory {missing} does not exist" in run.stderr
    assert not (tmp_path / "a").exists()
