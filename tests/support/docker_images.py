"""Base images for the container test, made from Debian's packages: no image registry is needed.

``base_image`` bootstraps Debian bookworm (its python3 is 3.11, as in ``python:3.11-slim-bookworm``)
with python3, pip, venv and the CA certificates, copies in this machine's CA bundle (so pip in an
image build trusts what this machine trusts), writes a ``/etc/pip.conf`` with that bundle and the
package indexes this machine's pip uses (http and https ones; a ``file://`` index does not exist
inside a build), and imports the tree as an image. Both Dockerfiles take it as ``PYTHON_IMAGE``.
``standin_image`` builds ``tests/support/docker/{postgres,redis}`` on it: stand-ins for the
official images that keep the part of their contract the compose file relies on.

Built images are kept as ``docker save`` tarballs in ``MNIST_DOCKER_CACHE`` (default
``/var/cache/mnist-queue/docker-images``; empty: no cache), named by a hash of everything that went
into them, so the next run on this machine loads them in seconds and a change rebuilds them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.docker_engine import Engine

RECIPE = "1"  # bump to rebuild every cached base image
SUITE = "bookworm"
PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_LOCAL_CAS = Path("/usr/local/share/ca-certificates")
STANDINS = Path(__file__).parent / "docker"
BUILD_SECONDS = 1800
# An imported tree has no environment: the official python image's PATH and locale.
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


def cache_dir() -> Path | None:
    value = os.environ.get("MNIST_DOCKER_CACHE", "/var/cache/mnist-queue/docker-images")
    return Path(value) if value else None


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (``MNIST_DEBIAN_MIRROR`` wins), else deb.debian.org."""
    if os.environ.get("MNIST_DEBIAN_MIRROR"):
        return os.environ["MNIST_DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d")
    for path in [*sorted(sources.glob("*.sources")), Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and "debian-archive-keyring" in fields.get("Signed-By", ""):
                    uri = next((u for u in fields.get("URIs", "").split() if is_debian_archive(u)), None)
                    if uri:
                        return uri
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and is_debian_archive(parts[1]):
                    return parts[1]
    return DEFAULT_MIRROR


def is_debian_archive(uri: str) -> bool:
    return uri.startswith(("http://", "https://")) and uri.rstrip("/").endswith("/debian")


def pip_conf() -> str:
    """A pip.conf for image builds: this machine's CA bundle and its http(s) package indexes."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    values: dict[str, list[tuple[int, str]]] = {"index-url": [], "extra-index-url": []}
    rank = {":env:": 0, "site": 1, "user": 2, "global": 3}  # pip's precedence, strongest first
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        if name in values:
            for url in value.strip().strip("'\"").split():
                if url.startswith(("http://", "https://")):
                    values[name].append((rank.get(scope, 4), url))
    lines = ["[global]", f"cert = {HOST_CA_BUNDLE}", "timeout = 180"]
    if values["index-url"]:
        lines.append(f"index-url = {min(values['index-url'])[1]}")
    extra = list(dict.fromkeys(url for _, url in values["extra-index-url"]))
    if extra:
        lines.append(f"extra-index-url = {' '.join(extra)}")
    return "\n".join(lines) + "\n"


def digest(*parts: bytes | str) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part if isinstance(part, bytes) else part.encode())
        hashed.update(b"\0")
    return hashed.hexdigest()[:16]


def local_cas() -> list[Path]:
    return sorted(HOST_LOCAL_CAS.glob("**/*.crt")) if HOST_LOCAL_CAS.is_dir() else []


def base_image(engine: Engine, workdir: Path) -> str:
    """The tag of a local bookworm image with python3, pip and venv; built on first use, then cached."""
    mirror, conf = debian_mirror(), pip_conf()
    cas = [HOST_CA_BUNDLE.read_bytes(), *(path.read_bytes() for path in local_cas())]
    key = digest(RECIPE, SUITE, mirror, " ".join(PACKAGES), conf, *cas, *(str(c) for c in IMPORT_CHANGES))
    tag = f"mnist-queue-base/{SUITE}-python3:{key}"
    if engine.image_exists(tag) or load_cached(engine, tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    rootfs = workdir / "rootfs"
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
        check=True, capture_output=True, timeout=BUILD_SECONDS,
    )  # fmt: skip
    trim(rootfs)
    # The bundle itself, and the machine's own CAs where update-ca-certificates finds them again
    # (an apt-get install in a stand-in's build regenerates the bundle).
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    for path in local_cas():
        target = rootfs / "usr/local/share/ca-certificates" / path.relative_to(HOST_LOCAL_CAS)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (rootfs / "etc/pip.conf").write_text(conf)
    import_tree(engine, rootfs, tag)
    shutil.rmtree(rootfs)
    save_cached(engine, tag)
    return tag


def trim(rootfs: Path) -> None:
    """What an image needs not: downloaded packages, package lists (builds update them), docs."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "usr/share/doc/*",
        "usr/share/man/*",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_file() or path.is_symlink():
                path.unlink()


def import_tree(engine: Engine, rootfs: Path, tag: str) -> None:
    changes = [part for change in IMPORT_CHANGES for part in ("--change", change)]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE
    )
    imported = subprocess.run(
        ["docker", "import", *changes, "-", tag], stdin=tar.stdout, env=engine.env, capture_output=True, text=True
    )
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        raise RuntimeError(f"docker import of {rootfs} failed: {imported.stderr}")


def standin_image(engine: Engine, name: str, base: str) -> str:
    """The tag of the stand-in ``name`` (postgres, redis) built on ``base``; cached like the base."""
    context = STANDINS / name
    files = sorted(path for path in context.rglob("*") if path.is_file())
    key = digest(RECIPE, base, *(f"{path.relative_to(context)}:{path.stat().st_mode & 0o111}" for path in files),
                 *(path.read_bytes() for path in files))  # fmt: skip
    tag = f"mnist-queue-standin/{name}:{key}"
    if engine.image_exists(tag) or load_cached(engine, tag):
        return tag
    # Its apt-get needs Debian's mirror: on this machine's network, as the private engine routes nothing.
    engine.docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        tag,
        str(context),
        timeout=BUILD_SECONDS,
    )
    save_cached(engine, tag)
    return tag


def cache_file(tag: str) -> Path | None:
    folder = cache_dir()
    return folder / (re.sub(r"[^A-Za-z0-9._-]", "_", tag) + ".tar") if folder else None


def load_cached(engine: Engine, tag: str) -> bool:
    path = cache_file(tag)
    if path is None or not path.is_file():
        return False
    if engine.docker("load", "--input", str(path), check=False).returncode != 0:
        path.unlink(missing_ok=True)  # a truncated file from an interrupted run: build anew
        return False
    return engine.image_exists(tag)


def save_cached(engine: Engine, tag: str) -> None:
    """Keep ``tag`` for the next run, replacing older builds of the same image; best effort."""
    path = cache_file(tag)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        engine.docker("save", "--output", str(partial), tag)
        partial.replace(path)
        stem = path.name.rsplit("_", 1)[0]  # the name without the key
        for older in path.parent.glob(f"{stem}_*.tar"):
            if older != path:
                older.unlink()
    except (OSError, RuntimeError):
        pass
