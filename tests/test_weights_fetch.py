"""`reid weights fetch` against a server on 127.0.0.1 (there is no internet here): resume after a cut, a checksum
mismatch refused and the bad file removed, a redirect followed, a 404 named; the lock and the override file."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from reid.weights_fetch import FetchError, Source, download, fetch

PAYLOAD = bytes(range(256)) * 400  # 100 KB


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_once: set[str] = set()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/file.bin")
            self.end_headers()
            return
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.path in self.cut_once:  # the connection drops half way, once
            self.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.files = {"/file.bin": PAYLOAD}
    _Handler.cut_once = set()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_cut_download_resumes_where_it_stopped(server: str, tmp_path: Path) -> None:
    _Handler.cut_once = {"/file.bin"}
    with pytest.raises(FetchError, match=r"file.bin.part is kept and the next run resumes it"):
        download(f"{server}/file.bin", tmp_path / "file.bin", progress=False)
    part = tmp_path / "file.bin.part"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    download(f"{server}/file.bin", tmp_path / "file.bin", progress=False)  # a Range request for the rest
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD and not part.exists()


def test_a_redirect_is_followed_and_a_404_is_named(server: str, tmp_path: Path) -> None:
    assert download(f"{server}/moved", tmp_path / "a.bin", progress=False).read_bytes() == PAYLOAD
    with pytest.raises(FetchError, match=r"/gone.bin: HTTP 404 Not Found \(the publisher moved or removed"):
        download(f"{server}/gone.bin", tmp_path / "b.bin", progress=False)
    assert not (tmp_path / "b.bin").exists()


def test_checksums_pinned_or_locked_and_a_mismatch_removes_the_file(server: str, tmp_path: Path) -> None:
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    pinned = {"good": Source("good.bin", ("methods.baseline.weights",), f"{server}/file.bin", digest[:8]),
              "bad": Source("bad.bin", (), f"{server}/file.bin", "00000000")}
    result = fetch(["good"], tmp_path, pinned, progress=False)
    assert result["fetched"] == {"good": str(tmp_path / "good.bin")}
    assert f"methods.baseline.weights: {tmp_path / 'good.bin'}" in (tmp_path / "params.override.yaml").read_text()
    with pytest.raises(FetchError, match=r"bad.bin: sha256 .* does not match 00000000 \(the publisher\); the file "
                                         r"was removed"):
        fetch(["bad"], tmp_path, pinned, progress=False)
    assert not (tmp_path / "bad.bin").exists()
    # no published hash: the first download's sha256 goes into weights.lock and later files must match it
    unpinned = {"free": Source("free.bin", (), f"{server}/file.bin")}
    fetch(["free"], tmp_path, unpinned, progress=False)
    assert digest in (tmp_path / "weights.lock").read_text()
    _Handler.files["/file.bin"] = b"another file"
    (tmp_path / "free.bin").unlink()
    with pytest.raises(FetchError, match=r"free.bin: sha256 .* \(weights.lock\); the file was removed"):
        fetch(["free"], tmp_path, unpinned, progress=False)


def test_a_zip_pack_member_and_files_without_a_direct_url(server: str, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("buffalo_l/det_10g.onnx", b"detector bytes")
    _Handler.files["/buffalo_l.zip"] = buffer.getvalue()
    sources = {"det": Source("det_10g.onnx", ("teachers.faces.model",), f"{server}/buffalo_l.zip",
                             member="det_10g.onnx"),
               "drive": Source("osnet.pth", ("methods.deskpro.weights",), manual="a Google Drive link")}
    result = fetch(["det", "drive"], tmp_path, sources, progress=False)
    assert (tmp_path / "det_10g.onnx").read_bytes() == b"detector bytes"
    assert result["manual"] == {"drive": f"osnet.pth: a Google Drive link; place it at {tmp_path / 'osnet.pth'}"}
    assert "methods.deskpro.weights" not in (tmp_path / "params.override.yaml").read_text()
