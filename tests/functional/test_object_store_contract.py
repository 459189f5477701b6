"""Both object stores keep the same contract (local folder and R2 on LocalStack)."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from connector.downloads.storage import LocalStore, ObjectStore, R2ObjectStore
from connector.integrations.r2 import R2Config, StorageUnavailable, content_disposition
from tests.localstack import ACCESS_KEY_ID, SECRET_ACCESS_KEY

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("localstack")]


def local_config(bucket: str, endpoint: str) -> R2Config:
    """A bucket on LocalStack (127.0.0.1): an instance that allows private endpoints."""
    return R2Config("acct", ACCESS_KEY_ID, SECRET_ACCESS_KEY, bucket, endpoint, private_ok=True)


@pytest.fixture(params=["local", "r2"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "files")
    endpoint: str = request.getfixturevalue("localstack_endpoint")
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="auto",
    ).create_bucket(Bucket=bucket)
    return R2ObjectStore(local_config(bucket, endpoint))


def fetch(delivery: Any) -> bytes:
    if delivery.url is not None:
        with urllib.request.urlopen(delivery.url, timeout=10) as answer:
            body: bytes = answer.read()
            return body
    return Path(delivery.path).read_bytes()


def test_upload_then_exists_download_and_deliver(object_store: ObjectStore, tmp_path: Path) -> None:
    """What is uploaded exists, downloads byte for byte, and its delivery serves it."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"\x00keygate\xff" * 1000)
    key = "products/42/Ünïcode file.bin"
    assert object_store.exists(key) is False
    object_store.upload(key, source)
    assert object_store.exists(key) is True
    object_store.download(key, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    delivery = object_store.delivery(key, "file.bin", 60)
    assert delivery.filename == "file.bin"
    assert fetch(delivery) == source.read_bytes()


def test_keys_and_names_of_any_characters_are_delivered(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    """Every object key a product may name (spaces, '+', '%', '#', '?', '&', '=', ';',
    quotes, Unicode, empty folders, a file name of 200 bytes) is delivered: on R2 through a
    presigned URL the bucket, checking its signature, serves, with the buyer's file name as
    Keygate's own answers give it."""
    keys = [
        "a b/tool+1 100%.zip",
        "q/a#b?c=d&e;f.pdf",
        "q/quote'\"<>.pdf",
        "ü/山田 файл 🎉.pdf",
        "x//y/a~b*(c).pdf",
        "x/%2F%20.pdf",
        "long/" + "n" * 196 + ".pdf",
    ]
    source = tmp_path / "source.bin"
    for key in keys:
        source.write_bytes(key.encode())
        object_store.upload(key, source)
        filename = key.rsplit("/", 1)[-1]
        delivery = object_store.delivery(key, filename, 60)
        if delivery.url is None:
            assert fetch(delivery) == key.encode()
            continue
        with urllib.request.urlopen(delivery.url, timeout=10) as answer:
            assert answer.read() == key.encode(), key
            assert answer.headers["Content-Disposition"] == content_disposition(filename)


def test_downloading_a_missing_object_is_file_not_found(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    """A missing object is FileNotFoundError on every backend (never a storage outage)."""
    with pytest.raises(FileNotFoundError):
        object_store.download("nope/missing.bin", tmp_path / "x")


def test_delivering_a_missing_object_is_file_not_found(object_store: ObjectStore) -> None:
    """No backend hands out a delivery (an R2 presigned URL) for an object that is not there."""
    with pytest.raises(FileNotFoundError):
        object_store.delivery("nope/missing.bin", "missing.bin", 60)


def test_the_version_of_an_object_changes_when_it_is_replaced(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    """version() is None for a missing object and changes when the object is replaced
    (buyers' stamped copies of it are then made anew)."""
    source = tmp_path / "source.bin"
    assert object_store.version("books/guide.pdf") is None
    source.write_bytes(b"edition one")
    object_store.upload("books/guide.pdf", source)
    first = object_store.version("books/guide.pdf")
    assert first is not None and object_store.version("books/guide.pdf") == first
    source.write_bytes(b"edition two")
    object_store.upload("books/guide.pdf", source)
    assert object_store.version("books/guide.pdf") not in (None, first)


def test_info_gives_the_size_of_an_object_as_it_is_now(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    """info() is None for a missing object and gives the size of the object stored now (what
    a HEAD on a download link answers as its Content-Length)."""
    source = tmp_path / "source.bin"
    assert object_store.info("books/guide.pdf") is None
    source.write_bytes(b"edition one")
    object_store.upload("books/guide.pdf", source)
    first = object_store.info("books/guide.pdf")
    assert first is not None and first.size == len(b"edition one")
    source.write_bytes(b"the second edition")
    object_store.upload("books/guide.pdf", source)
    second = object_store.info("books/guide.pdf")
    assert second is not None and second.size == len(b"the second edition")
    object_store.delete("books/guide.pdf")
    assert object_store.info("books/guide.pdf") is None


def test_deleting_a_folder_removes_everything_in_it_and_nothing_beside_it(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    """delete_prefix empties one folder, sub-folders included, on every backend; a folder
    whose name merely starts the same ("stores/10/" beside "stores/1/") stays."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"content")
    inside = ["stores/1/a.pdf", "stores/1/deep/er/b.zip", "stores/1/c d.txt"]
    beside = ["stores/10/a.pdf", "stores/other.pdf", "watermarked/1/x.pdf"]
    for key in inside + beside:
        object_store.upload(key, source)
    assert object_store.delete_prefix("stores/1/") == 3
    assert [key for key in inside if object_store.exists(key)] == []
    assert [key for key in beside if object_store.exists(key)] == beside
    assert object_store.delete_prefix("stores/1/") == 0  # again, or never there: nothing


def test_deleting_a_folder_in_a_bucket_goes_past_one_listing_page(
    localstack_endpoint: str,
) -> None:
    """More objects than one S3 listing page and one DeleteObjects call take (1000): all
    are listed, and all go."""
    bucket = f"prefix-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=localstack_endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="auto",
    )
    s3.create_bucket(Bucket=bucket)
    keys = [f"watermarked/7/{n}/copy.pdf" for n in range(1003)] + ["watermarked/70/kept.pdf"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))
    store = R2ObjectStore(local_config(bucket, localstack_endpoint))
    assert len({item.key for item in store.list_objects("watermarked/7/")}) == 1003
    assert store.delete_prefix("watermarked/7/") == 1003
    left = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [item["Key"] for item in left] == ["watermarked/70/kept.pdf"]


def test_listing_a_folder_gives_everything_in_it_with_when_it_was_written(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    """list_objects gives every object under a prefix, sub-folders included, and nothing
    beside it, each with an aware UTC time of its last write (the sweep of unrecorded
    copies keeps those written lately)."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"content")
    inside = ["watermarked/1/a.pdf", "watermarked/1/deep/er/b.zip", "watermarked/1/c d.txt"]
    beside = ["watermarked/10/a.pdf", "watermarked/other.pdf", "stores/1/x.pdf"]
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    for key in inside + beside:
        object_store.upload(key, source)
    listed = list(object_store.list_objects("watermarked/1/"))
    assert sorted(item.key for item in listed) == sorted(inside)
    after = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert all(before < item.modified < after for item in listed), listed
    assert list(object_store.list_objects("watermarked/2/")) == []  # never there: nothing


@pytest.fixture
def refusing_bucket() -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that refuses uploads (403 AccessDenied: a key without
    write permission) and cuts every download off partway."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("ETag", '"abc"')
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("ETag", '"abc"')
            self.end_headers()
            self.wfile.write(b"x" * 10)  # and the connection closes
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_refused_upload_or_a_cut_download_is_storage_unavailable(
    refusing_bucket: str, tmp_path: Path
) -> None:
    """boto3's transfers wrap these in errors of their own (S3UploadFailedError,
    RetriesExceededError): they are an unavailable store (a 503, a job retried), never a
    500 for the buyer whose copy was being stamped."""
    store = R2ObjectStore(
        R2Config("acct", "key-id", "secret", "bucket", refusing_bucket, private_ok=True)
    )
    source = tmp_path / "copy.pdf"
    source.write_bytes(b"%PDF-1.4")
    with pytest.raises(StorageUnavailable, match="upload failed"):
        store.upload("watermarked/1/2/copy.pdf", source)
    with pytest.raises(StorageUnavailable):
        store.download("products/1/manual.pdf", tmp_path / "original")


@contextlib.contextmanager
def bucket_failing_reads(status: int, code: str) -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that has every object (HEAD: 200) but answers every
    GET with ``status`` and the S3 error ``code``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("ETag", '"abc"')
            self.end_headers()

        def do_GET(self) -> None:
            body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (500, "InternalError")])
def test_a_download_the_bucket_refuses_or_fails_is_no_missing_file(
    status: int, code: str, tmp_path: Path
) -> None:
    """A bucket that answers a download with an error other than "no such key" (a token
    without read permission, a server error) is an unavailable store, with its answer: the
    buyer's copy is stamped on a later try (a 503 meanwhile, the link not used up), never
    recorded as made from an original that is not in storage."""
    with bucket_failing_reads(status, code) as endpoint:
        store = R2ObjectStore(
            R2Config("acct", "key-id", "secret", "bucket", endpoint, private_ok=True)
        )
        with pytest.raises(StorageUnavailable) as raised:
            store.download("products/1/manual.pdf", tmp_path / "original")
    assert (raised.value.status, raised.value.code) == (status, code)


def test_an_object_in_one_bucket_is_not_taken_to_be_in_another_at_its_endpoint(
    localstack_endpoint: str, tmp_path: Path
) -> None:
    """Two stores' own buckets at one endpoint (one R2 account holds both): an object just
    found in the first, and remembered briefly, is not taken to be in the second. There the
    same key is missing (no presigned URL to nothing, no download counted), and its
    version is none."""
    s3 = boto3.client(
        "s3",
        endpoint_url=localstack_endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="auto",
    )
    first, second = (f"store-{uuid.uuid4().hex[:12]}" for _ in range(2))
    for bucket in (first, second):
        s3.create_bucket(Bucket=bucket)
    source = tmp_path / "guide.pdf"
    source.write_bytes(b"%PDF-1.7 the first store's file")
    mine = R2ObjectStore(local_config(first, localstack_endpoint))
    theirs = R2ObjectStore(local_config(second, localstack_endpoint))
    mine.upload("books/guide.pdf", source)
    assert fetch(mine.delivery("books/guide.pdf", "guide.pdf", 60)) == source.read_bytes()
    assert mine.version("books/guide.pdf") is not None
    with pytest.raises(FileNotFoundError):
        theirs.delivery("books/guide.pdf", "guide.pdf", 60)
    assert theirs.version("books/guide.pdf") is None


@pytest.fixture
def bucket_keeping_deleted_objects() -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that lists one object under any prefix and answers a
    request to delete it with a per-object error (a key without delete permission)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return

        def answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.answer(
                b"<ListBucketResult><Name>bucket</Name><KeyCount>1</KeyCount>"
                b"<IsTruncated>false</IsTruncated><Contents><Key>watermarked/1/a.pdf</Key>"
                b"<LastModified>2025-01-01T00:00:00.000Z</LastModified><Size>3</Size>"
                b"</Contents></ListBucketResult>"
            )

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer(
                b"<DeleteResult><Error><Key>watermarked/1/a.pdf</Key><Code>AccessDenied"
                b"</Code><Message>Access Denied</Message></Error></DeleteResult>"
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_objects_the_bucket_would_not_delete_are_no_folder_emptied(
    bucket_keeping_deleted_objects: str,
) -> None:
    """A bucket that answers a deletion of a folder but keeps some of its objects (DeleteObjects
    lists them as errors) has not emptied it: an erasure or a store's deletion retries
    rather than report the buyers' copies gone."""
    store = R2ObjectStore(
        R2Config(
            "acct", "key-id", "secret", "bucket", bucket_keeping_deleted_objects, private_ok=True
        )
    )
    with pytest.raises(StorageUnavailable, match="refused to delete 1 objects"):
        store.delete_prefix("watermarked/1/")


def test_an_upload_to_a_bucket_that_does_not_answer_is_storage_unavailable(
    tmp_path: Path,
) -> None:
    """An upload that reaches no bucket (nothing listens at the endpoint) fails: a buyer's
    copy is never recorded as stored when it is not."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = R2ObjectStore(
        R2Config("acct", "key-id", "secret", "bucket", f"http://127.0.0.1:{port}", private_ok=True)
    )
    source = tmp_path / "copy.pdf"
    source.write_bytes(b"%PDF-1.4")
    with pytest.raises(StorageUnavailable, match="upload failed"):
        store.upload("watermarked/1/2/copy.pdf", source)
