"""``uat_core.engine.download``: CIFAR-10 fetched into the command line's cache, with progress and one-line errors.

The tests have no network: the archive is a tiny stand-in with the real layout (``conftest.fake_cifar10_archive``),
served through ``file://`` (urllib's real code path) with its own MD5 patched in, or a fake response that breaks off;
"no network" is a refused connection to a closed local port, or the opener raising what urllib raises offline.
"""
from __future__ import annotations

import io
import socket
import urllib.error
from pathlib import Path

import pytest
import torch

from conftest import fake_cifar10_archive, files_under
from uat_core.engine import download as D
from uat_core.engine.data import load_dataset
from uat_core.engine.errors import UATError


@pytest.fixture
def cache(isolated_cache, monkeypatch):
    """An empty user cache and no UAT_DATA: load_dataset("cifar10") reads (or downloads to) <cache>/uat_lab/cifar10."""
    monkeypatch.delenv("UAT_DATA", raising=False)
    return isolated_cache


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The fake archive as the download's address and checksum, read 4 KiB at a time (many progress calls)."""
    archive, md5, images = fake_cifar10_archive(tmp_path)
    monkeypatch.setattr(D, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(D, "CIFAR10_MD5", D._md5(archive))
    monkeypatch.setattr(D, "CHUNK_BYTES", 4096)
    return archive, md5, images


def closed_port_url() -> str:
    """An http address on this machine where nothing listens: the connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


class BreakingResponse(io.BytesIO):
    """A response that announces ``len(data)`` bytes, serves ``upto`` of them, then fails like a dropped link
    (or, with ``fail=None``, just ends early)."""

    def __init__(self, data: bytes, upto: int, fail: BaseException | None = ConnectionResetError(104, "reset by peer")):
        super().__init__(data[:upto])
        self.headers = {"Content-Length": str(len(data))}
        self.fail = fail

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        if not chunk and self.fail is not None:
            raise self.fail
        return chunk


def assert_one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_the_constants_are_torchvisions():
    """The app downloads exactly what the command line's torchvision would: same address, name, MD5, folder."""
    from torchvision.datasets import CIFAR10
    assert (D.CIFAR10_URL, D.CIFAR10_ARCHIVE, D.CIFAR10_MD5, D.CIFAR10_FOLDER) == \
        (CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5, CIFAR10.base_folder)
    assert set(D.CIFAR10_FILES) == {f for f, _ in CIFAR10.train_list + CIFAR10.test_list} | {CIFAR10.meta["filename"]}
    assert f"{D.CIFAR10_BYTES / 1e6:.0f} MB" == "170 MB"


def test_download_reports_growing_byte_counts_and_lands_where_load_dataset_reads(cache, served, monkeypatch):
    archive, md5, images = served
    calls: list[tuple[int, int]] = []
    root = D.download_cifar10(progress=lambda done, total: calls.append((done, total)))

    size = archive.stat().st_size
    done = [d for d, _ in calls]
    assert done[0] == 0 and done[-1] == size and len(calls) > 3
    assert all(b > a for a, b in zip(done, done[1:])), done              # strictly increasing
    assert {t for _, t in calls} == {size}                               # the announced total, every time
    # the command line's folder; the archive and every temporary file are gone
    assert root == cache / "uat_lab" / "cifar10" == D.cifar10_root()
    assert files_under(root) == sorted(f"cifar-10-batches-py/{f}" for f in md5)
    assert D.cifar10_downloaded()

    # load_dataset("cifar10") reads it there (torchvision checks every batch's MD5: the fake ones are patched in)
    from torchvision.datasets import CIFAR10
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    for split in ("train", "test"):
        data = load_dataset("cifar10", split, progress=False)
        assert torch.equal(data.images, images[split]) and str(root) in data.source

    # a second call finds it and returns at once
    again: list = []
    assert D.download_cifar10(progress=lambda *a: again.append(a)) == root and again == []


def test_no_network_is_one_line_and_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(D, "CIFAR10_URL", closed_port_url())
    with pytest.raises(UATError) as e:
        D.download_cifar10()
    msg = assert_one_line(e)
    assert msg.startswith("cannot download CIFAR-10 from 127.0.0.1:") and "(Connection refused)" in msg, msg
    assert msg.endswith("check the network connection, or set UAT_DATA to a CIFAR-10 copy"), msg
    assert not D.cifar10_root().exists() and files_under(cache) == []

    # what urllib raises on a machine without a network (this one: no name resolution)
    def offline(url, timeout):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    monkeypatch.setattr(D, "_open_url", offline)
    with pytest.raises(UATError) as e:
        D.download_cifar10()
    assert "(Name or service not known)" in assert_one_line(e) and files_under(cache) == []


def test_without_an_announced_length_the_bar_still_ends_full(cache, served, monkeypatch):
    archive, _, _ = served
    data = archive.read_bytes()
    monkeypatch.setattr(D, "_open_url", lambda url, timeout: io.BytesIO(data))        # no headers at all
    calls: list[tuple[int, int]] = []
    D.download_cifar10(progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, D.CIFAR10_BYTES) and calls[-1] == (len(data), len(data)) and D.cifar10_downloaded()


@pytest.mark.parametrize("fail", [ConnectionResetError(104, "Connection reset\nby peer"), None],
                         ids=["reset", "ended-early"])
def test_a_transfer_that_breaks_off_leaves_no_partial_file(cache, served, monkeypatch, fail):
    archive, _, _ = served
    data = archive.read_bytes()
    monkeypatch.setattr(D, "_open_url", lambda url, timeout: BreakingResponse(data, len(data) // 2, fail))
    calls: list[int] = []
    with pytest.raises(UATError) as e:
        D.download_cifar10(progress=lambda done, total: calls.append(done))
    assert "broke off after" in assert_one_line(e)
    assert calls[-1] == len(data) // 2
    assert files_under(cache) == [] and not D.cifar10_downloaded()


def test_a_corrupt_archive_is_refused_and_not_kept(cache, served, monkeypatch):
    monkeypatch.setattr(D, "CIFAR10_MD5", "c58f30108f718f92721af3b95e74349a")      # the real one: the fake fails it
    with pytest.raises(UATError) as e:
        D.download_cifar10()
    assert "corrupt" in assert_one_line(e) and files_under(cache) == []


def test_an_archive_without_the_batches_is_refused(cache, tmp_path, monkeypatch):
    import tarfile
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "readme.txt").write_text("not CIFAR-10")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "readme.txt", arcname="cifar-10-batches-py/readme.txt")
    monkeypatch.setattr(D, "CIFAR10_URL", bad.as_uri())
    monkeypatch.setattr(D, "CIFAR10_MD5", D._md5(bad))
    with pytest.raises(UATError) as e:
        D.download_cifar10()
    assert "lacks cifar-10-batches-py/data_batch_1" in assert_one_line(e)
    assert files_under(cache) == [] and not D.cifar10_downloaded()


def test_an_interrupted_download_leaves_no_partial_file(cache, served):
    """A Streamlit rerun (or Ctrl-C) stops the download from inside the progress callback: nothing remains."""
    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        D.download_cifar10(progress=interrupt)
    assert files_under(cache) == []


def test_a_verified_archive_already_there_is_unpacked_without_a_download(cache, served, monkeypatch):
    """A command-line download stopped while unpacking left the whole archive: it is used, not fetched again."""
    archive, md5, _ = served
    root = D.cifar10_root()
    root.mkdir(parents=True)
    (root / D.CIFAR10_ARCHIVE).write_bytes(archive.read_bytes())
    monkeypatch.setattr(D, "_open_url", lambda url, timeout: pytest.fail("downloaded again"))
    assert D.download_cifar10() == root
    assert files_under(root) == sorted(f"cifar-10-batches-py/{f}" for f in md5)


def test_a_killed_downloads_leftovers_are_swept(cache, served):
    import os
    import time
    root = D.cifar10_root()
    (root / ".cifar-10-batches-py.abc" / "cifar-10-batches-py").mkdir(parents=True)
    stale = root / ".cifar-10-python.tar.gz.xyz.part"
    stale.write_bytes(b"half an archive")
    old = time.time() - 2 * D._STALE_S
    for p in (stale, root / ".cifar-10-batches-py.abc"):
        os.utime(p, (old, old))
    D.download_cifar10()
    assert [Path(p).parts[0] for p in files_under(root)] == ["cifar-10-batches-py"] * 7
