"""The image-source allow-list (tsp_labelstudio.images.ImageSources), case by case, without a network.

The same rules against a real backend process, Label Studio and HTTP servers are in
tests/test_backend_security.py.
"""

from __future__ import annotations

import os

import pytest

from tests.ls_fixtures import write_png
from tsp_labelstudio.images import ImageFetcher, ImageFetchError, ImageSources, SourceRefusedError

LS = "http://ls.example:8080"
FILES = "https://files.example/slices/"


@pytest.fixture
def sources(tmp_path):
    (tmp_path / "allowed" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return ImageSources(LS, [FILES], [tmp_path / "allowed"])


@pytest.mark.parametrize("url,expected", [
    ("/data/upload/3/a.png", ("ls", f"{LS}/data/upload/3/a.png")),
    ("data/upload/3/a.png", ("ls", f"{LS}/data/upload/3/a.png")),
    ("/data/local-files/?d=ct/a.png", ("ls", f"{LS}/data/local-files/?d=ct/a.png")),
    (f"{LS}/data/upload/3/a.png", ("ls", f"{LS}/data/upload/3/a.png")),
    (f"{FILES}a.png", ("http", f"{FILES}a.png")),
    ("https://FILES.example:443/slices/x/a.png", ("http", "https://FILES.example:443/slices/x/a.png")),
])
def test_allowed_urls(sources, url, expected):
    assert sources.resolve(url) == expected


@pytest.mark.parametrize("url", [
    f"{LS}/api/projects/", f"{LS}/api/current-user/whoami", "/data/avatars/a.png", "/data/export/1.json",
    "/data/upload/../../api/projects/", "/data/upload/%2e%2e/%2E%2E/api/projects/", f"{LS}/data/upload/..\\..\\api",
    "http://ls.example:8081/data/upload/3/a.png", "https://ls.example:8080/data/upload/3/a.png",
    "http://127.0.0.1:8080/data/upload/3/a.png", "http://u:p@ls.example:8080/data/upload/3/a.png",
    "https://files.example/slices-old/a.png", "https://files.example/slices/../secret/a.png",
    "https://files.example/slices%2F..%2Fsecret/a.png", "http://files.example/slices/a.png",
    "https://files.example:8443/slices/a.png", "https://evil.example/slices/a.png",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/data/upload/1/a.png",
    "http://ls.example:notaport/data/upload/1/a.png",
])
def test_refused_urls_name_the_setting(sources, url):
    with pytest.raises(SourceRefusedError, match="not an allowed image source.*TSP_ALLOWED_URL_PREFIXES"):
        sources.resolve(url)


@pytest.mark.parametrize("url", ["s3://bucket/a.png", "ftp://host/a.png", "gopher://127.0.0.1:6379/_x",
                                 "data:image/png;base64,AAAA", "javascript:alert(1)"])
def test_other_schemes_are_refused(sources, url):
    with pytest.raises(SourceRefusedError, match="unsupported URL scheme.*TSP_ALLOWED_URL_PREFIXES"):
        sources.resolve(url)


def test_local_files_resolve_links_and_dots_before_the_check(sources, tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    write_png(allowed / "a.png")
    write_png(outside / "b.png")
    (allowed / "out.png").symlink_to(outside / "b.png")
    (allowed / "in.png").symlink_to(allowed / "a.png")
    (tmp_path / "alias").symlink_to(allowed)  # another name for the allowed folder
    real_a = str(allowed / "a.png")
    assert sources.resolve(real_a) == ("file", real_a)
    assert sources.resolve(f"file://{real_a}") == ("file", real_a)
    assert sources.resolve(f"file://{str(allowed / 'a b.png').replace(' ', '%20')}") == ("file", str(allowed / "a b.png"))
    assert sources.resolve(f"{allowed}/sub/../a.png") == ("file", real_a)
    assert sources.resolve(str(allowed / "in.png")) == ("file", real_a)
    assert sources.resolve(str(tmp_path / "alias" / "a.png")) == ("file", real_a)
    answers = set()
    for path in [str(outside / "b.png"), str(outside / "missing.png"), f"{allowed}/../outside/b.png",
                 str(allowed / "out.png"), "/etc/passwd", "/proc/self/environ", f"file://{outside / 'b.png'}",
                 f"file://otherhost{allowed / 'a.png'}", str(allowed) + "-twin/a.png"]:
        with pytest.raises(SourceRefusedError) as info:
            sources.resolve(path)
        answers.add(str(info.value).replace(path, "<path>"))
    # one answer for all (the remote file:// host is a different refusal)
    assert len(answers) == 2 and any("TSP_ALLOWED_DIRS" in a for a in answers), answers


def test_nothing_is_allowed_by_default(tmp_path, monkeypatch):
    for name in ("LABEL_STUDIO_URL", "TSP_ALLOWED_URL_PREFIXES", "TSP_ALLOWED_DIRS"):
        monkeypatch.delenv(name, raising=False)
    sources = ImageSources.from_env()
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_URL is not set"):
        sources.resolve("/data/upload/1/a.png")
    for url in (str(write_png(tmp_path / "a.png")), "https://files.example/a.png"):
        with pytest.raises(SourceRefusedError):
            sources.resolve(url)


def test_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls:8080/")
    monkeypatch.setenv("TSP_ALLOWED_URL_PREFIXES", "https://a.example/x  http://b.example:81/")
    monkeypatch.setenv("TSP_ALLOWED_DIRS", os.pathsep.join([str(tmp_path / "d1"), str(tmp_path / "d2")]))
    s = ImageSources.from_env()
    assert s.ls_url == "http://ls:8080" and s.url_prefixes == ("https://a.example/x", "http://b.example:81/")
    assert s.dirs == (tmp_path / "d1", tmp_path / "d2")
    assert s.resolve("https://a.example/x/1.png")[0] == "http"  # "x" is a folder: x/..., not x-old/...
    with pytest.raises(SourceRefusedError):
        s.resolve("https://a.example/x-old/1.png")
    assert s.resolve(str(tmp_path / "d2" / "a.png"))[0] == "file"


@pytest.mark.parametrize("prefix", ["files.example/slices", "ftp://files.example/", "https://u:p@files.example/",
                                    "https://files.example/?q=1", "https:///slices"])
def test_malformed_prefixes_are_configuration_errors(prefix):
    with pytest.raises(ValueError, match="TSP_ALLOWED_URL_PREFIXES"):
        ImageSources("", [prefix])


def test_fetcher_reads_allowed_files_and_refuses_fifos(tmp_path):
    allowed = tmp_path / "allowed"
    png = write_png(allowed / "a.png", size=32)
    os.mkfifo(allowed / "pipe.png")
    f = ImageFetcher(sources=ImageSources(dirs=[allowed]), api_key="")
    assert f.read(str(png)).shape == (32, 32, 3)
    with pytest.raises(ImageFetchError, match="local file not found"):  # inside an allowed folder: may say so
        f.read(str(allowed / "missing.png"))
    with pytest.raises(ImageFetchError, match="not a regular file"):
        f.read(str(allowed / "pipe.png"))
    small = ImageFetcher(sources=ImageSources(dirs=[allowed]), api_key="", max_bytes=100)
    with pytest.raises(ImageFetchError, match="larger than"):
        small.read(str(png))
    few = ImageFetcher(sources=ImageSources(dirs=[allowed]), api_key="", max_pixels=31 * 32)
    with pytest.raises(ImageFetchError, match="32x32 image.*TSP_MAX_IMAGE_PIXELS"):
        few.read(str(png))
