"""The listener over TLS with real dcmtk peers: mutual authentication; plain TCP and foreign certificates refused."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mmclinic.pacs.service import PacsService
from mmclinic.pacs.testing import SCU_AE, Store, make_settings
from mmclinic.store.models import Instance

# Nagle off, as in the benchmark: otherwise each DIMSE exchange waits on a delayed ACK.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(cwd: Path, name: str, ca: str, cn: str, ext: str = "") -> None:
    """``name.key`` + ``name.crt`` signed by ``ca`` (a throw-away CA in ``cwd``)."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=cwd)  # fmt: skip
    extra = ["-extfile", f"{name}.ext"] if ext else []
    if ext:
        (cwd / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-sha256", *extra, cwd=cwd)  # fmt: skip


def _new_ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "2", "-subj", f"/CN={name} test CA", cwd=cwd)  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path, require_tool: Callable[[str], str]) -> Path:
    require_tool("openssl")
    d = tmp_path / "pki"
    d.mkdir()
    _new_ca(d, "ca")
    _issue(d, "server", "ca", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _issue(d, "client", "ca", SCU_AE)
    _new_ca(d, "rogue")  # a CA the listener does not trust
    _issue(d, "intruder", "rogue", SCU_AE)
    return d


@pytest.fixture
def tls_service(store: Store, pki: Path) -> Iterator[PacsService]:
    settings = make_settings(
        store.data_dir, tls_cert=pki / "server.crt", tls_key=pki / "server.key", tls_ca=pki / "ca.crt"
    )
    svc = PacsService(settings, store.factory)
    svc.start()
    yield svc
    svc.stop()


def _dcmtk(tool: str, port: int, pki: Path, client: str | None, *files: Path) -> int:
    tls = ["+tls", str(pki / f"{client}.key"), str(pki / f"{client}.crt"), "+cf", str(pki / "ca.crt")]
    cmd = [tool, *(tls if client else []), "-aet", SCU_AE, "-aec", "MMCLINIC", "127.0.0.1", str(port)]
    return subprocess.run([*cmd, *map(str, files)], capture_output=True, timeout=60, env=DCMTK_ENV).returncode


def _instances(store: Store) -> int:
    with store.factory() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


@pytest.fixture
def tls_port(tls_service: PacsService, require_tool: Callable[[str], str]) -> int:
    """The TLS listener's port, once the dcmtk peers are known to be installed."""
    require_tool("echoscu")
    require_tool("storescu")
    return tls_service.scp.port


def test_mutual_tls_echo_and_store_with_dcmtk(tls_port: int, store: Store, pki: Path, study_files: list[Path]) -> None:
    assert _dcmtk("echoscu", tls_port, pki, "client") == 0
    assert _dcmtk("storescu", tls_port, pki, "client", *study_files[:3]) == 0
    assert _instances(store) == 3


def test_plain_tcp_and_untrusted_client_certificates_are_refused(
    tls_port: int, store: Store, pki: Path, study_files: list[Path]
) -> None:
    assert _dcmtk("echoscu", tls_port, pki, None) != 0  # no TLS at all
    assert _dcmtk("storescu", tls_port, pki, "intruder", study_files[0]) != 0  # signed by a CA we do not trust
    assert _instances(store) == 0
    assert _dcmtk("echoscu", tls_port, pki, "client") == 0  # the listener still serves trusted peers
