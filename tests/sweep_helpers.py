"""Real servers on 127.0.0.1 for the sweep tests: an S3 store (``rclone serve s3``), a Dask scheduler with
worker processes (plain or TLS), a bare git remote; and the certificates TLS needs."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline_helpers import commit_all, make_project, project_env, run, write_mirror

ACCESS_KEY, SECRET_KEY = "sweeptestkey", "Zq8sweep-test-secret-4f1c"
BUCKET = "mnist-sweep"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s: {process.args}")


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Start a server in its own process group (so that stopping it stops its children too)."""
    return subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_s3(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``rclone serve s3`` of ``root`` (one bucket, BUCKET) with the test credentials; (process, endpoint URL)."""
    (root / BUCKET).mkdir(parents=True, exist_ok=True)
    rclone = Path(sys.executable).with_name("rclone")
    port = free_port()
    process = start([str(rclone if rclone.exists() else "rclone"), "serve", "s3", "--config", os.devnull,
                     "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--addr", f"127.0.0.1:{port}", str(root)], log)
    wait_for_port(port, process)
    return process, f"http://127.0.0.1:{port}"


def tls_options(folder: Path, role: str) -> list[str]:
    return ["--tls-ca-file", str(folder / "ca.pem"), "--tls-cert", str(folder / f"{role}.pem"),
            "--tls-key", str(folder / f"{role}-key.pem")]


def start_dask(folder: Path, workers: int, tls: Path | None = None) -> tuple[str, list[subprocess.Popen]]:
    """A ``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes named w1, w2, ...
    on 127.0.0.1, over TLS with the certificates in ``tls`` if given; (address, [scheduler, *workers])."""
    port = free_port()
    protocol = "tls" if tls else "tcp"
    secure = tls_options(tls, "node") if tls else []
    scheduler = start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                       "--port", str(port), "--protocol", protocol, "--dashboard-address", ":0", "--no-show",
                       *secure], folder / "scheduler.log")
    processes = [scheduler]
    wait_for_port(port, scheduler)
    address = f"{protocol}://127.0.0.1:{port}"
    for index in range(1, workers + 1):
        processes.append(start([sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", f"w{index}",
                                "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                *secure], folder / f"w{index}.log"))
    wait_for_workers(address, workers, tls)
    return address, processes


def wait_for_workers(address: str, count: int, tls: Path | None) -> None:
    from distributed import Client
    from distributed.security import Security

    security = Security(tls_ca_file=str(tls / "ca.pem"), tls_client_cert=str(tls / "node.pem"),
                        tls_client_key=str(tls / "node-key.pem"), require_encryption=True) if tls else None
    with Client(address, security=security, timeout=30) as client:
        client.wait_for_workers(count, timeout=60)


def make_certificates(folder: Path) -> None:
    """A CA (ca.pem), a certificate it signs for the nodes and the client (node.pem, node-key.pem), and a
    self-signed impostor (rogue.pem, rogue-key.pem) that the CA never signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(name, key, issuer_name, issuer_key, ca):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def write(stem, cert, key=None):
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (folder / f"{stem}-key.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("mnist-sweep test CA", ca_key, None, None, True)
    write("ca", ca)
    node_key = ec.generate_private_key(ec.SECP256R1())
    write("node", certificate("node", node_key, ca.subject, ca_key, False), node_key)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    write("rogue", certificate("rogue", rogue_key, None, None, False), rogue_key)


def sweep_project(tmp: Path, endpoint: str, train: dict | None = None) -> tuple[Path, dict[str, str], Path]:
    """A reproduced synthetic project whose commit is on a bare git remote and whose outputs' remote is the
    S3 store at ``endpoint`` (credentials in .dvc/config.local only); (project, env, bare git remote)."""
    mirror = tmp / "mirror"
    project = make_project(tmp, write_mirror(mirror), {"epochs": 2, **(train or {})})
    env = project_env(project, mirror)
    run(["dvc", "repro"], project, env)
    run(["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/{tmp.name}"], project, env)
    run(["dvc", "remote", "modify", "store", "endpointurl", endpoint], project, env)
    run(["dvc", "remote", "modify", "--local", "store", "access_key_id", ACCESS_KEY], project, env)
    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", SECRET_KEY], project, env)
    commit_all(project, "baseline with its DVC remote")
    remote = tmp / "remote.git"
    run(["git", "init", "-q", "--bare", str(remote)], tmp)
    run(["git", "remote", "add", "origin", str(remote)], project)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
    return project, env, remote


def sweep(project: Path, env: dict, *arguments: str) -> subprocess.CompletedProcess:
    return run(["python", "-m", "mnist_classification", "sweep", *arguments], project, env, check=False)


def exp_refs(git_dir: Path) -> list[str]:
    return run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], git_dir).stdout.split()
