"""A throwaway CA, server and client certificates made with the openssl command line, for TLS tests."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert), cwd=folder)  # fmt: skip
    return key, cert


def _leaf(
    folder: Path, name: str, ca_key: Path, ca_cert: Path, *, server: bool, alt_names: str = "DNS:localhost,IP:127.0.0.1"
) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(f"subjectAltName={alt_names}\n" if server else "extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr),
             cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=folder)  # fmt: skip
    return key, cert


def make_pki(folder: Path, *, name: str = "fedbus-test-ca") -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(folder, name)
    server_key, server_cert = _leaf(folder, f"{name}-server", ca_key, ca_cert, server=True)
    client_key, client_cert = _leaf(folder, f"{name}-client", ca_key, ca_cert, server=False)
    return Pki(ca_cert, server_cert, server_key, client_cert, client_key)


@dataclass(frozen=True)
class SitePki:
    """A CA, the server's certificate for `server_ips`, and one client certificate per site (CN = its name)."""

    ca: Path
    server_cert: Path
    server_key: Path
    sites: dict[str, tuple[Path, Path]]  # name -> (certificate, key)


def make_site_pki(folder: Path, server_ips: list[str], site_names: list[str]) -> SitePki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(folder, "fedbus-sites-ca")
    names = ",".join(f"IP:{ip}" for ip in server_ips)
    server_key, server_cert = _leaf(folder, "coordinator", ca_key, ca_cert, server=True, alt_names=names)
    sites = {}
    for site in site_names:
        key, cert = _leaf(folder, site, ca_key, ca_cert, server=False)
        sites[site] = (cert, key)
    return SitePki(ca_cert, server_cert, server_key, sites)
