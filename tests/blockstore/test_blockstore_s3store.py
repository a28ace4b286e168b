"""S3BlockStore beyond the shared contract: its layout, its errors (one type each), retries
across an endpoint restart, the storage class, and `open_block_store`."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from blockstore.errors import (
    BlockNotFound,
    S3BucketMissing,
    S3CredentialsRejected,
    S3StoreError,
    S3Unreachable,
)
from blockstore.open_store import check_block_store, open_block_store
from blockstore.s3store import RetryPolicy, S3BlockStore, S3Settings
from blockstore.store import LocalDirStore
from tests.helpers.moto_s3 import CREDENTIALS, MotoS3, free_port

ID_A = hashlib.sha256(b"a").hexdigest()
QUICK = RetryPolicy(retries=1, first_backoff_seconds=0.05, total_seconds=2, connect_seconds=1)
"""Give up fast where failing is the point."""
PATIENT = RetryPolicy(retries=20, first_backoff_seconds=0.1, max_backoff_seconds=0.5)
"""Every backoff is at least the first one, so 20 retries outlast a 0.8 s outage."""


def settings(s3: MotoS3, **more) -> S3Settings:
    return S3Settings(endpoint=s3.endpoint, **{**CREDENTIALS, **more})


def test_layout_is_listable_by_account_prefix(moto_s3):
    bucket = moto_s3.new_bucket()
    store = S3BlockStore(bucket, "deploy/blocks", settings(moto_s3))
    store.put(f"alice/{ID_A}", b"sealed")
    store.put(f"john.doe/{ID_A}", b"sealed")
    listed = moto_s3.client().list_objects_v2(Bucket=bucket, Prefix="deploy/blocks/alice/")
    assert [o["Key"] for o in listed["Contents"]] == [f"deploy/blocks/alice/{ID_A}"]
    names = moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert f"deploy/blocks/john%2Edoe/{ID_A}" in [o["Key"] for o in names]


def test_prefixes_and_foreign_objects_stay_apart(moto_s3):
    bucket = moto_s3.new_bucket()
    one = S3BlockStore(bucket, "one", settings(moto_s3))
    two = S3BlockStore(bucket, "two", settings(moto_s3))
    one.put(f"alice/{ID_A}", b"1")
    moto_s3.client().put_object(Bucket=bucket, Key="one/alice/notes.txt", Body=b"x")
    assert list(one.keys()) == [f"alice/{ID_A}"]
    assert list(two.keys()) == []
    assert not two.has(f"alice/{ID_A}")


def test_check_passes_and_leaves_nothing(moto_s3):
    store = S3BlockStore(moto_s3.new_bucket(), "p", settings(moto_s3))
    check_block_store(store)
    assert moto_s3.client().list_objects_v2(Bucket=store.bucket)["KeyCount"] == 0
    assert list(store.keys()) == []


def test_missing_bucket(moto_s3):
    store = S3BlockStore("no-such-bucket", "", settings(moto_s3))
    with pytest.raises(S3BucketMissing, match="no-such-bucket"):
        check_block_store(store)
    with pytest.raises(S3BucketMissing):
        store.put(f"alice/{ID_A}", b"a")
    with pytest.raises(S3BucketMissing):
        list(store.keys("alice/"))  # a listing is not typed by obstore: diagnosed
    with pytest.raises(BlockNotFound):  # a read cannot tell a missing bucket from a block
        store.get(f"alice/{ID_A}")


def test_bad_credentials(moto_s3):
    bucket = moto_s3.new_bucket()
    with moto_s3.auth() as (key_id, secret):
        good = S3BlockStore(
            bucket, "", settings(moto_s3, access_key_id=key_id, secret_access_key=secret)
        )
        check_block_store(good)
        good.put(f"alice/{ID_A}", b"a")
        for wrong in (
            {"access_key_id": key_id, "secret_access_key": "not-the-secret"},
            {"access_key_id": "AKIAUNKNOWN", "secret_access_key": secret},
        ):
            bad = S3BlockStore(bucket, "", settings(moto_s3, **wrong))
            with pytest.raises(S3CredentialsRejected):
                check_block_store(bad)
            with pytest.raises(S3CredentialsRejected):
                bad.get(f"alice/{ID_A}")
            with pytest.raises(S3CredentialsRejected):
                list(bad.keys())


def test_unreachable_endpoint():
    where = S3Settings(endpoint=f"http://127.0.0.1:{free_port()}", retry=QUICK, **CREDENTIALS)
    store = S3BlockStore("bucket", "", where)
    with pytest.raises(S3Unreachable, match=r"127\.0\.0\.1"):
        check_block_store(store)
    with pytest.raises(S3Unreachable):
        store.get(f"alice/{ID_A}")


def test_errors_are_told_apart_by_type():
    kinds = (S3BucketMissing, S3CredentialsRejected, S3Unreachable)
    for kind in kinds:
        assert issubclass(kind, S3StoreError)
        assert not any(issubclass(kind, other) for other in kinds if other is not kind)


def test_calls_ride_out_an_endpoint_restart(moto_s3):
    bucket = moto_s3.new_bucket()
    with MotoS3() as s3:  # its own server: this test stops it
        store = S3BlockStore(bucket, "", settings(s3, retry=PATIENT))
        store.put(f"alice/{ID_A}", b"before")
        s3.stop()
        restarter = threading.Timer(0.8, s3.start)
        restarter.start()
        try:
            started = time.monotonic()
            assert store.put(f"bob/{ID_A}", b"during") is True
            assert time.monotonic() - started >= 0.5  # it did wait for the restart
            assert store.get(f"alice/{ID_A}") == b"before"
            assert store.get(f"bob/{ID_A}") == b"during"
        finally:
            restarter.join(10)


def test_storage_class(moto_s3):
    bucket = moto_s3.new_bucket()
    store = S3BlockStore(bucket, "archive", settings(moto_s3, storage_class="GLACIER_IR"))
    store.put(f"alice/{ID_A}", b"cold")
    head = moto_s3.client().head_object(Bucket=bucket, Key=f"archive/alice/{ID_A}")
    assert head["StorageClass"] == "GLACIER_IR"
    assert store.get(f"alice/{ID_A}") == b"cold"


def test_open_block_store(tmp_path, moto_s3):
    local = open_block_store(tmp_path / "blocks", S3Settings(endpoint="http://ignored.invalid"))
    assert isinstance(local, LocalDirStore)
    assert isinstance(open_block_store(str(tmp_path / "other")), LocalDirStore)
    check_block_store(local)
    bucket = moto_s3.new_bucket()
    s3 = open_block_store(f"s3://{bucket}/a/b/", settings(moto_s3))
    assert isinstance(s3, S3BlockStore)
    assert (s3.bucket, s3.prefix, s3.url) == (bucket, "a/b", f"s3://{bucket}/a/b")
    check_block_store(s3)
    for bad in ("s3:///prefix", "gs://bucket/x", "s3://bucket/x?versionId=1"):
        with pytest.raises(ValueError, match="block store"):
            open_block_store(bad)
