"""Turn MNIST splits and folders of user images into rows for ``input_data``."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import multiprocessing
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from shared.config import Settings
from shared.db.connection import Connection
from shared.digits import IMAGE_SHAPE
from shared.host.cpus import available_cpus
from shared.images import preprocess, preprocess_many, store
from shared.images.codec import encode_image
from shared.images.preprocess import PREPROCESS_VERSION
from shared.images.store import ImageRow
from shared.training import mnist

USER_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
SHAPE = list(IMAGE_SHAPE)
DIGIT_FOLDERS = frozenset(str(digit) for digit in range(10))


def mnist_rows(images: np.ndarray, labels: np.ndarray, split: str, start: int = 0) -> Iterator[ImageRow]:
    """Rows keyed by (split, index), so ingesting twice stores nothing twice."""
    for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
        yield ImageRow(encode_image(image), int(label), SHAPE, split, start + offset, None)


def printable(path: Path | str) -> str:
    """``path`` with control characters escaped, so a file name cannot write to the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(path))


def load_mnist(source: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = mnist.load_split(source, split)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


# --- fast folder ingest: a sorted walk, decoding on every core, binary COPY --------------------

# Files one pool task decodes: large enough that pickling and scheduling are small beside decoding,
# and that the small pictures among them make groups worth preprocessing together.
DECODE_CHUNK = 512
# Chunks in flight per decoding process: enough to keep each busy while the parent copies, few
# enough that memory stays bounded whatever the folder's size.
IN_FLIGHT_PER_PROCESS = 3
# Rows per COPY and commit: each commit is a point a stopped ingest resumes from.
COPY_ROWS = 4096
# Decoding processes beyond the CPUs: one waiting on a file's read, or on the parent while it copies,
# leaves its CPU to another.
EXTRA_PROCESSES = 1


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """What a decoding process needs of the settings (picklable, unlike a live Settings' context)."""

    max_upload_bytes: int
    max_image_pixels: int
    max_decode_bytes: int
    concurrent_decodes: int

    @classmethod
    def of(cls, config: Settings) -> DecodeLimits:
        return cls(
            config.max_upload_bytes,
            config.max_image_pixels,
            config.max_decode_megabytes * 2**20,
            config.concurrent_decodes,
        )


@dataclasses.dataclass
class FolderIngest:
    """What one ingest of a folder did; ``rejected`` holds one printable line per file not stored."""

    inserted: int = 0
    already: int = 0
    files: int = 0
    rejected: list[str] = dataclasses.field(default_factory=list)


def walk_sorted(folder: str, rejected: list[str]) -> Iterator[str]:
    """The pictures under ``folder`` in the byte order of their full paths, one folder listed at a time.

    A folder's entries are sorted by name, a subfolder's as ``name/``: then the walk's order is the
    order of the paths as strings, the order ``stored_sources`` reads them in, so the two merge.
    Links are never followed (a link could lead out of the folder to any file the user can read);
    they and folders that cannot be listed are added to ``rejected``. A folder's listing is held as
    names and kinds while it is walked, not as scandir's entries, which each keep a path and more: the
    memory a walk holds follows the largest folder's count of files.
    Paths stay strings: building a Path per file cost more than the rest of the walk.
    """
    try:
        with os.scandir(folder) as listing:
            entries = [_named_kind(entry) for entry in listing]
    except OSError as error:
        rejected.append(f"{printable(folder)}: cannot be listed: {error.strerror or error}")
        return
    entries.sort()
    for name, kind in entries:
        path = os.path.join(folder, name.removesuffix("/") if kind == _FOLDER else name)
        picture = os.path.splitext(path)[1].lower() in USER_IMAGE_SUFFIXES
        if kind in (_LINK, _LINKED_FOLDER):
            if picture or kind == _LINKED_FOLDER:
                rejected.append(f"{printable(path)}: a symbolic link, not followed")
        elif kind == _FOLDER:
            yield from walk_sorted(path, rejected)
        elif picture and kind == _FILE:
            yield path
        elif picture:  # a pipe or a device: reading it could wait for ever
            rejected.append(f"{printable(path)}: not a regular file")


_FILE, _FOLDER, _LINK, _LINKED_FOLDER, _OTHER = range(5)


def _named_kind(entry: os.DirEntry[str]) -> tuple[str, int]:
    """An entry's sort key (a folder's name ends in "/") and what it is, from the listing alone but for a link,
    whose target is looked at only to tell a linked folder (one that cannot be looked at is not reported)."""
    if entry.is_symlink():
        try:
            return entry.name, _LINKED_FOLDER if entry.is_dir() else _LINK
        except OSError:
            return entry.name, _LINK
    if entry.is_dir(follow_symlinks=False):
        return entry.name + "/", _FOLDER
    return entry.name, _FILE if entry.is_file(follow_symlinks=False) else _OTHER


def new_files(paths: Iterator[str], stored: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """(path, whether it is new) for each of ``paths``: new when not among ``stored``.

    Both are ascending, so one pass over each finds the stored ones without holding either."""
    known = next(stored, None)
    for path in paths:
        while known is not None and known < path:
            known = next(stored, None)
        yield path, known != path


def decode_chunk(files: list[tuple[str, int | None]], limits: DecodeLimits) -> tuple[list[ImageRow], list[str]]:
    """Rows of the pictures (path, label) read, decoded and preprocessed, and a line for each that was not;
    runs in a pool process, the parent only copies.

    Small pictures are put in MNIST form together (``preprocess_many``), the others one at a time as they
    are decoded, so that the chunk never holds more than small pictures."""
    outcomes: list[np.ndarray | str] = []  # per file: its MNIST form (small ones: their grey levels), or why not
    small: list[tuple[int, np.ndarray]] = []
    for name, _ in files:
        try:
            with preprocess.decode_slots(limits.concurrent_decodes):
                data = read_picture(name, limits.max_upload_bytes)
                grey = preprocess.grey_pixels(
                    preprocess.open_user_image(data, limits.max_image_pixels, limits.max_decode_bytes)
                )
                if preprocess_many.groupable(grey):
                    small.append((len(outcomes), grey))
                else:
                    grey = preprocess.form_of_grey(grey)
        except (ValueError, OSError) as error:
            outcomes.append(error.strerror if isinstance(error, OSError) and error.strerror else str(error))
            continue
        outcomes.append(grey)
    forms = preprocess_many.forms_of_greys([grey for _, grey in small])
    for (index, _), form in zip(small, forms, strict=True):
        outcomes[index] = form
    rows, rejected = [], []
    for (name, label), outcome in zip(files, outcomes, strict=True):
        try:
            if isinstance(outcome, str):
                raise ValueError(outcome)
            image = encode_image(preprocess.refused_if_blank(outcome))
            rows.append(ImageRow(image, label, SHAPE, "upload", None, name))
        except ValueError as error:
            rejected.append(f"{printable(name)}: {error}")
    return rows, rejected


def read_picture(name: str, max_bytes: int) -> bytes:
    """The bytes of the file ``name``, refused unread when it is larger than ``max_bytes``.

    Opened without following a link and without waiting on a pipe, as the walk judged it (the file
    may have been replaced since); the one open file is then sized and read, with no other lookup."""
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError("a symbolic link, not followed") from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError("not a regular file")
        if status.st_size > max_bytes:
            raise ValueError(f"the file is {status.st_size} bytes; at most {max_bytes} (MAX_UPLOAD_BYTES) are accepted")
        # One read: a short one is the file's end; one byte beyond the size judged means the file grew.
        data = os.read(descriptor, status.st_size + 1)
    finally:
        os.close(descriptor)
    if len(data) > status.st_size:  # never read beyond the size that was judged
        raise ValueError("the file grew while it was read")
    return data


def ingest_folder(
    conn: Connection,
    read_conn: Connection,
    folder: Path,
    config: Settings,
    on_stored: Callable[[list[int], int], None] = lambda ids, seen: None,
    processes: int | None = None,
) -> FolderIngest:
    """Store the pictures under ``folder`` not stored yet; ``on_stored(new ids, files seen)`` after each commit.

    Paths already stored (one query, ``read_conn``'s) are skipped without being read. The first
    chunk is decoded here; a pool of ``processes`` (default: one more than the CPUs this process may use) starts
    only for a folder with more, and at most ``IN_FLIGHT_PER_PROCESS`` chunks per process wait.
    ValueError for a path that is not a folder or a folder with no pictures at all.
    """
    if not folder.is_dir():
        raise ValueError(f"{printable(folder)} is not a folder")
    root = folder.resolve()
    outcome = FolderIngest()
    limits = DecodeLimits.of(config)
    workers = processes or available_cpus() + EXTRA_PROCESSES
    prefix = str(root).rstrip("/") + "/"
    files = new_files(walk_sorted(str(root), outcome.rejected), store.stored_sources(read_conn, prefix))
    pending: collections.deque[concurrent.futures.Future[tuple[list[ImageRow], list[str]]]] = collections.deque()
    buffered: list[ImageRow] = []
    pool: concurrent.futures.ProcessPoolExecutor | None = None
    first = True

    def flush(force: bool) -> None:
        if buffered and (force or len(buffered) >= COPY_ROWS):
            ids = store.copy_images(conn, buffered, PREPROCESS_VERSION)
            outcome.inserted += len(ids)
            outcome.already += len(buffered) - len(ids)  # stored meanwhile by another ingest
            buffered.clear()
            on_stored(ids, outcome.files)

    def collect(rows: list[ImageRow], rejected: list[str]) -> None:
        buffered.extend(rows)
        outcome.rejected.extend(rejected)
        flush(force=False)

    try:
        for chunk in _chunks(files, root, outcome):
            if first:
                first = False
                collect(*decode_chunk(chunk, limits))  # a small folder never pays for starting a pool
                continue
            if pool is None:
                # Forked: a child starts with the parent's modules imported, where a fresh interpreter
                # spent longer importing than a chunk takes to decode. The children never touch the
                # parent's connections, and leave without closing them (os._exit).
                pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            pending.append(pool.submit(decode_chunk, chunk, limits))
            while len(pending) >= workers * IN_FLIGHT_PER_PROCESS:
                collect(*pending.popleft().result())
        while pending:
            collect(*pending.popleft().result())
        flush(force=True)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if outcome.files == 0:
        raise ValueError(f"{printable(folder)} holds no PNG, JPEG, GIF, BMP or WebP images")
    return outcome


def _chunks(
    files: Iterator[tuple[str, bool]], root: Path, outcome: FolderIngest
) -> Iterator[list[tuple[str, int | None]]]:
    """The new files in lists of ``DECODE_CHUNK`` (path, label); counts every file and those already stored."""
    chunk: list[tuple[str, int | None]] = []
    top = str(root)
    for path, new in files:
        outcome.files += 1
        if not new:
            outcome.already += 1
            continue
        try:
            path.encode()
        except UnicodeEncodeError:  # a name in no UTF-8: PostgreSQL's text cannot hold it
            outcome.rejected.append(f"{printable(path)}: the name is not valid UTF-8")
            continue
        folder, _ = os.path.split(path)
        _, digit = os.path.split(folder)
        chunk.append((path, int(digit) if folder != top and digit in DIGIT_FOLDERS else None))
        if len(chunk) == DECODE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
