"""The checksum example: what it reports of a folder, and the paths it refuses."""

from __future__ import annotations

import hashlib

import pytest

from examples.checksums.provider import provider as checksums
from toolkit.client import ClientError


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "root"
    (data / "run1" / "sub").mkdir(parents=True)
    (data / "run1" / "a.txt").write_bytes(b"alpha")
    (data / "run1" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "secret.txt").write_text("outside")
    return data


@pytest.fixture
def client(aptk_client, root):
    return aptk_client(checksums, config={"APTK_CHECKSUMS_ROOT": str(root)})


def test_every_file_with_size_and_sha256(client, root):
    status = client.run({"path": "run1"}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    files = {f["path"]: f for f in status["details"]["files"]}
    assert sorted(files) == ["a.txt", "sub/b.bin"]
    assert files["a.txt"]["sha256"] == hashlib.sha256(b"alpha").hexdigest() and files["a.txt"]["size"] == 5
    assert files["sub/b.bin"]["size"] == 2560
    assert status["details"]["total_bytes"] == 2565


@pytest.mark.parametrize("path", ["..", "run1/../../", "/../secret.txt"])
def test_a_path_outside_the_root_is_a_400(client, path):
    with pytest.raises(ClientError) as refused:
        client.run({"path": path})
    assert refused.value.status == 400 and "outside the root" in refused.value.description


def test_a_missing_folder_is_a_400(client):
    with pytest.raises(ClientError) as refused:
        client.run({"path": "nope"})
    assert refused.value.status == 400 and "is not a folder" in refused.value.description


def test_too_many_files_fails(client):
    status = client.run({"path": "run1", "max_files": 1}, wait=True)
    assert status["status"] == "FAILED" and status["details"]["code"] == "TooManyFiles"
