"""Real storage servers on loopback, for tests of the transfer provider.

- :mod:`tests.servers.sftp`: an SSH/SFTP server (``asyncssh``) in a thread of
  the test process, serving a chroot directory, with password and public-key
  authentication.
- :mod:`tests.servers.s3`: an S3-compatible HTTP server (``moto``'s
  ``ThreadedMotoServer``) in a thread of the test process, with a bucket.
- :mod:`tests.servers.fixtures`: session-scoped pytest fixtures ``sftp_server``
  (chrooted), ``sftp_server_no_chroot`` and ``s3_server``, and function-scoped
  ``sftp_location`` / ``sftp_location_no_chroot`` / ``s3_location`` giving
  each test a fresh, empty place. Load them once for the whole suite
  with ``pytest_plugins = ["tests.servers.fixtures"]`` in ``tests/conftest.py``.

Clients are fsspec's: ``sftp`` (paramiko) and ``s3`` (s3fs). The servers need
the test-only packages ``asyncssh`` and ``moto[server]``; the fixtures skip
when those are not installed.
"""
