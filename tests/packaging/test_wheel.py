"""The wheel built from the checkout: its metadata (license expression, URLs, classifiers), its
files (LICENSE included, tests not), and a build without deprecation warnings."""

from __future__ import annotations

import email.parser
import zipfile
from email.message import Message

import pytest

from flame_async._version import __version__

from .conftest import Built
from .helpers import REPO, ROOT

pytestmark = pytest.mark.slow

DIST_INFO = f"flame_async-{__version__}.dist-info"


def metadata(built: Built) -> Message:
    with zipfile.ZipFile(built.wheel) as wheel:
        text = wheel.read(f"{DIST_INFO}/METADATA").decode()
    return email.parser.Parser().parsestr(text)


@pytest.mark.timeout(600)  # the first test to use `built` pays for the build (seconds to ~1 min)
def test_the_wheel_is_named_as_the_docs_say_and_builds_without_deprecations(built: Built) -> None:
    assert built.wheel.name == f"flame_async-{__version__}-py3-none-any.whl"
    assert "running bdist_wheel" in built.log, "the log holds the build backend's output"
    assert "deprecat" not in built.log.lower(), [
        line for line in built.log.splitlines() if "deprecat" in line.lower()
    ]


@pytest.mark.timeout(600)  # may pay for the build, see above
def test_the_wheel_metadata_has_license_expression_urls_and_classifiers(built: Built) -> None:
    meta = metadata(built)
    assert meta["Name"] == "flame-async"
    assert meta["Version"] == __version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["License"] is None  # the expression replaces the free-text field
    assert meta["Author"] == "flame-async developers"
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls["Homepage"] == REPO
    assert urls["Source"] == REPO
    assert urls["Issues"] == f"{REPO}/issues"
    assert urls["Documentation"].startswith(f"{REPO}/blob/main/docs/")
    classifiers = set(meta.get_all("Classifier") or [])
    assert {
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
    } <= classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    assert not any(c.startswith("License :: ") for c in classifiers)  # PEP 639
    requires = meta.get_all("Requires-Dist") or []
    assert not [r for r in requires if r.startswith("torch") and 'extra == "test"' in r]
    assert 'torch==2.13.0; extra == "test-torch"' in requires


@pytest.mark.timeout(600)  # may pay for the build, see above
def test_the_wheel_ships_the_license_and_the_package_only(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = wheel.namelist()
        license_text = wheel.read(f"{DIST_INFO}/licenses/LICENSE").decode()
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "flame_async/py.typed" in names
    assert "flame_async/cli.py" in names and "flame_async/local/__init__.py" in names
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"flame_async", DIST_INFO}, tops
    with zipfile.ZipFile(built.wheel) as wheel:
        entry_points = wheel.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert "flame-async = flame_async.cli:main" in entry_points
    assert "flame_async = flame_async.testing" in entry_points
