"""The loopback SFTP and S3 servers work through fsspec, as the transfer
provider will use them."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest


MiB = 2**20
CHUNK = 1 * MiB
PAYLOAD = os.urandom(12 * MiB)
CHUNKS = [PAYLOAD[i : i + CHUNK] for i in range(0, len(PAYLOAD), CHUNK)]


# -- SFTP ----------------------------------------------------------------------


def test_sftp_round_trip_12mib_in_1mib_chunks(sftp_location):
    fs = sftp_location.filesystem()
    path = sftp_location.join("data", "big.bin")
    fs.makedirs(sftp_location.join("data"), exist_ok=True)

    with fs.open(path, "wb") as f:
        # Without pipelining paramiko waits for an answer to each 32 KiB write
        # request: ~40 ms each on loopback (Nagle + delayed ACK), ~16 s here.
        f.set_pipelined(True)
        for chunk in CHUNKS:
            f.write(chunk)

    assert (sftp_location.local / "data" / "big.bin").read_bytes() == PAYLOAD

    info = fs.info(path)
    assert info["type"] == "file"
    assert info["size"] == len(PAYLOAD)
    assert isinstance(info["mtime"], datetime.datetime)
    assert info["mtime"].tzinfo is not None

    with fs.open(path, "rb") as f:
        f.prefetch(info["size"])  # likewise: pipelined reads
        back = b"".join(iter(lambda: f.read(CHUNK), b""))
    assert hashlib.sha256(back).digest() == hashlib.sha256(PAYLOAD).digest()

    assert fs.ls(sftp_location.path) == [sftp_location.join("data")]
    assert fs.ls(sftp_location.join("data")) == [path]
    listed = fs.ls(sftp_location.join("data"), detail=True)
    assert [(e["name"], e["size"], e["type"]) for e in listed] == [(path, len(PAYLOAD), "file")]

    fs.rm(path)
    assert not fs.exists(path)
    assert not (sftp_location.local / "data" / "big.bin").exists()
    fs.client.close()


def test_sftp_put_get_mkdir_mv_rm(sftp_location, tmp_path):
    fs = sftp_location.filesystem()
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD[: 256 * 1024])

    # fsspec >= 2026.1 makes the parents in put_file; older ones do not.
    fs.makedirs(sftp_location.join("a", "b"), exist_ok=True)
    fs.put(str(source), sftp_location.join("a", "b", "c.bin"))
    assert fs.isdir(sftp_location.join("a", "b"))
    fs.get(sftp_location.join("a", "b", "c.bin"), str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()

    fs.mkdir(sftp_location.join("x", "y"))  # create_parents=True by default
    with pytest.raises(FileExistsError):
        fs.mkdir(sftp_location.join("x", "y"))
    fs.makedirs(sftp_location.join("x", "y"), exist_ok=True)

    fs.mv(sftp_location.join("a", "b", "c.bin"), sftp_location.join("x", "y", "c.bin"))
    assert fs.cat_file(sftp_location.join("x", "y", "c.bin")) == source.read_bytes()
    assert not fs.exists(sftp_location.join("a", "b", "c.bin"))

    with pytest.raises(FileNotFoundError):
        fs.info(sftp_location.join("nope"))

    fs.rm(sftp_location.join("a"), recursive=True)
    fs.rm(sftp_location.join("x"), recursive=True)
    assert fs.ls(sftp_location.path) == []
    fs.client.close()


def test_sftp_set_mtime_through_paramiko(sftp_location):
    fs = sftp_location.filesystem()
    path = sftp_location.join("old.txt")
    fs.pipe_file(path, b"old")
    # fsspec has no API to set times; paramiko's SFTPClient (fs.ftp) has.
    # SFTP v3 carries whole seconds only: sub-second parts are dropped.
    mtime = 1_600_000_000
    fs.ftp.utime(path, (mtime + 5, mtime))
    assert fs.info(path)["mtime"] == datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
    assert fs.ftp.stat(path).st_mtime == mtime  # fs.modified(): fsspec >= 2026.1 only
    assert os.stat(sftp_location.local / "old.txt").st_mtime == mtime
    fs.ftp.chmod(path, 0o640)
    assert os.stat(sftp_location.local / "old.txt").st_mode & 0o777 == 0o640
    fs.client.close()


def test_sftp_config_and_auth(sftp_server, sftp_location):
    import fsspec
    import paramiko

    # The config-file form: URL (host, port, path) + storage_options.
    config = sftp_location.config()
    assert config["url"] == f"sftp://127.0.0.1:{sftp_server.port}{sftp_location.path}"
    fs, path = fsspec.core.url_to_fs(
        config["url"], skip_instance_cache=True, **config["storage_options"]
    )
    assert path == sftp_location.path
    fs.pipe_file(f"{path}/hello.txt", b"hello")
    assert (sftp_location.local / "hello.txt").read_bytes() == b"hello"
    fs.client.close()

    # Public-key authentication.
    key_config = sftp_server.config(sftp_location.path, auth="key")
    assert key_config["url"] == config["url"]
    assert "password" not in key_config["storage_options"]
    fs, path = fsspec.core.url_to_fs(
        key_config["url"], skip_instance_cache=True, **key_config["storage_options"]
    )
    assert fs.cat_file(f"{path}/hello.txt") == b"hello"
    fs.client.close()

    with pytest.raises(paramiko.AuthenticationException):
        sftp_server.filesystem(password="wrong")

    # No known_hosts is read: the default policy accepts the unknown host
    # key; "reject" (fsspec >= the version with host_key_policy) refuses it.
    from fsspec.implementations import sftp as fsspec_sftp

    if not hasattr(fsspec_sftp, "HOST_KEY_POLICIES"):
        return
    with pytest.raises(paramiko.SSHException):
        sftp_server.filesystem(host_key_policy="reject")


def test_sftp_is_chrooted(sftp_server, sftp_location, tmp_path):
    fs = sftp_server.filesystem()
    assert fs.ftp.normalize("/..") == "/"
    assert fs.ftp.normalize("/../..") == "/"
    names = {p.rsplit("/", 1)[-1] for p in fs.ls("/")}
    assert sftp_location.path.lstrip("/") in names
    assert names == {p.name for p in sftp_server.root.iterdir()}

    # "//name" (fsspec's makedirs sends such paths) stays inside the chroot
    # (asyncssh < 2.24 mapped it outside; tests.servers.sftp maps it itself).
    fs.makedirs(sftp_location.join("m1", "m2"), exist_ok=True)
    assert (sftp_location.local / "m1" / "m2").is_dir()
    fs.ftp.mkdir("/" + sftp_location.join("m3"))
    assert (sftp_location.local / "m3").is_dir()

    # asyncssh's chroot (unlike OpenSSH's ChrootDirectory): a link made on
    # the local disk that points outside the tree is followed by stat/open,
    # but realpath (paramiko normalize) and readlink on it say "no such file".
    (tmp_path / "secret").write_bytes(b"s")
    (sftp_location.local / "out").symlink_to(tmp_path / "secret")
    out = sftp_location.join("out")
    assert fs.cat_file(out) == b"s"
    assert stat.S_ISLNK(fs.ftp.lstat(out).st_mode)
    with pytest.raises(FileNotFoundError):
        fs.ftp.normalize(out)
    with pytest.raises(FileNotFoundError):
        fs.ftp.readlink(out)
    fs.client.close()


def test_sftp_links_and_no_chroot(sftp_location_no_chroot, tmp_path):
    location = sftp_location_no_chroot
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (location.local / "d").mkdir()
    (location.local / "d" / "f").write_bytes(b"f")
    (location.local / "in").symlink_to("d")
    (location.local / "out").symlink_to(outside)

    fs = location.filesystem()
    # Not chrooted: server paths are local paths; realpath resolves links.
    assert location.path == str(location.local)
    assert fs.ftp.normalize(location.join("in", "f")) == location.join("d", "f")
    assert fs.ftp.normalize(location.join("out")) == str(outside)
    assert fs.info(location.join("in"))["type"] == "directory"  # stat follows
    assert stat.S_ISLNK(fs.ftp.lstat(location.join("in")).st_mode)
    assert fs.ftp.readlink(location.join("in")) == "d"
    fs.client.close()


# -- S3 ------------------------------------------------------------------------


def test_s3_round_trip_12mib_in_1mib_chunks_multipart(s3_location):
    fs = s3_location.filesystem()
    path = s3_location.join("data", "big.bin")

    # s3fs buffers block_size bytes (default 50 MiB) before sending; with
    # 5 MiB blocks (the S3 minimum part size) 12 MiB go as 3 parts.
    with fs.open(path, "wb", block_size=5 * MiB) as f:
        for chunk in CHUNKS:
            f.write(chunk)

    info = fs.info(path)
    assert info["type"] == "file"
    assert info["size"] == len(PAYLOAD)
    assert isinstance(info["LastModified"], datetime.datetime)
    assert info["LastModified"].tzinfo is not None
    # A multipart ETag is md5(concat(part md5s))-<parts>, not the file's md5.
    parts = [PAYLOAD[i : i + 5 * MiB] for i in range(0, len(PAYLOAD), 5 * MiB)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert info["ETag"] == f'"{expected}-3"'

    with fs.open(path, "rb", block_size=4 * MiB) as f:
        back = b"".join(iter(lambda: f.read(CHUNK), b""))
    assert hashlib.sha256(back).digest() == hashlib.sha256(PAYLOAD).digest()

    assert fs.ls(s3_location.path) == [s3_location.join("data")]
    assert fs.ls(s3_location.join("data")) == [path]
    listed = fs.ls(s3_location.join("data"), detail=True)
    assert [(e["name"], e["size"], e["type"]) for e in listed] == [(path, len(PAYLOAD), "file")]

    fs.rm(path)
    assert not fs.exists(path)
    # No "directories" in S3: with its only object gone the prefix is gone too.
    assert not fs.exists(s3_location.join("data"))


def test_s3_single_put_etag_is_md5_and_metadata(s3_location):
    fs = s3_location.filesystem()
    path = s3_location.join("small.txt")
    with fs.open(path, "wb", Metadata={"mtime": "1600000000"}) as f:
        f.write(b"hello")
    info = fs.info(path)
    assert info["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    assert info["size"] == 5
    # LastModified cannot be set; keep the source's mtime in user metadata.
    assert fs.metadata(path) == {"mtime": "1600000000"}
    fs.rm(path)


def test_s3_config_url_to_fs(s3_server, s3_location):
    import fsspec

    config = s3_location.config()
    assert config["url"] == f"s3://{s3_server.bucket}/{s3_location.path.split('/', 1)[1]}"
    assert config["storage_options"]["client_kwargs"]["endpoint_url"].startswith(
        "http://127.0.0.1:"
    )
    fs, path = fsspec.core.url_to_fs(
        config["url"], skip_instance_cache=True, **config["storage_options"]
    )
    assert path == s3_location.path
    fs.pipe_file(f"{path}/hello.txt", b"hello")
    assert s3_server.boto3_client().get_object(
        Bucket=s3_server.bucket, Key=f"{path.split('/', 1)[1]}/hello.txt"
    )["Body"].read() == b"hello"


def test_s3_listings_cache_is_stale_until_invalidated(s3_server, s3_location):
    cached = s3_server.filesystem(use_listings_cache=True)
    fresh = s3_location.filesystem()  # use_listings_cache=False
    cached.pipe_file(s3_location.join("one"), b"1")
    assert cached.ls(s3_location.path) == [s3_location.join("one")]

    # Another writer (here boto3; could be a gunicorn worker) adds an object.
    key = s3_location.join("two").split("/", 1)[1]
    s3_server.boto3_client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"2")

    assert cached.ls(s3_location.path) == [s3_location.join("one")]  # stale
    assert sorted(fresh.ls(s3_location.path)) == [s3_location.join("one"), s3_location.join("two")]
    cached.invalidate_cache()
    assert sorted(cached.ls(s3_location.path)) == [s3_location.join("one"), s3_location.join("two")]


# -- both, from another process ---------------------------------------------------


_CHILD = """
import json, sys, fsspec
for config in json.loads(sys.argv[1]):
    fs, path = fsspec.core.url_to_fs(config["url"], **config["storage_options"])
    fs.pipe_file(path.rstrip("/") + "/from-child.txt", b"child")
    print(sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path)))
"""


def test_a_subprocess_reaches_both_servers_from_config(sftp_location, s3_location):
    configs = [sftp_location.config(), s3_location.config()]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(configs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['from-child.txt']", "['from-child.txt']"]
    assert (sftp_location.local / "from-child.txt").read_bytes() == b"child"
    assert s3_location.filesystem().cat_file(s3_location.join("from-child.txt")) == b"child"
