"""Checkpoint files of adamcore's NumPy optimizers (``Optimizer.save``/``load``).

A checkpoint is a NumPy ``.npz`` archive (no pickle, no torch): one ``.npy`` member per
state array (``"<index>.<name>"``), ``meta`` (JSON: format, version, optimizer family,
hyperparameters with schedules as data, step counts) and ``digest`` (SHA-256 over the
metadata and every array's name, dtype, shape and bytes).

Both directions stream: ``save`` writes the live state buffers member by member and
hashes them in place, ``load`` reads each member straight into the array the optimizer
will keep. Neither holds more than one copy of the state (plus a few MiB of buffers).

``save`` writes under a temporary name in the target's directory, flushes it to disk
and renames it over the target, so a crash leaves the previous checkpoint intact.
``load`` checks everything (readable archive, CRCs, format version, digest, optimizer
family, shapes) before the optimizer changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Tuple, Union

import numpy as np

from .schedule import Schedule, schedule_from_dict

__all__ = ["CheckpointError", "FORMAT_VERSION", "save", "load"]

#: Version of the checkpoint layout ``save`` writes; ``load`` reads this version and older.
FORMAT_VERSION = 1
_FORMAT_NAME = "adamcore.optimizer"
_CHUNK = 4 << 20  # bytes read at a time (zipfile holds about two such pieces while reading)

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: unreadable, corrupted, from a newer adamcore, or
    not matching the optimizer's parameters. The optimizer is left unchanged."""


# ------------------------------------------------------------------------------- save


def save(optimizer: Any, path: PathLike) -> None:
    """Write ``optimizer``'s state to ``path`` atomically. A callable ``lr`` must be an
    ``adamcore.schedule.Schedule`` to be saved."""
    path = os.fspath(path)
    state = optimizer.state_dict()
    groups = []
    for g, group in enumerate(state["param_groups"]):
        groups.append({key: _to_json(f"param_groups[{g}]['{key}']", value)
                       for key, value in group.items()})
    arrays: Dict[str, np.ndarray] = {}
    steps: Dict[str, int] = {}
    for index, entry in state["state"].items():
        steps[str(index)] = int(entry["step"])
        for name, value in entry.items():
            if name != "step":
                arrays[f"{index}.{name}"] = value  # the live buffer: written, never copied
    meta = {"format": _FORMAT_NAME, "version": FORMAT_VERSION, "optimizer": type(optimizer).__name__,
            "family": optimizer._family.name, "param_groups": groups, "steps": steps}
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")

    def write(handle: BinaryIO) -> None:
        digest = hashlib.sha256(meta_bytes)
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name in sorted(arrays):
                _hash_member(digest, name, arrays[name])
                _write_member(archive, name, arrays[name])
            _write_member(archive, "meta", np.frombuffer(meta_bytes, dtype=np.uint8))
            _write_member(archive, "digest",
                          np.frombuffer(digest.hexdigest().encode("ascii"), dtype=np.uint8))

    _write_atomically(path, write)


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _hash_member(digest: Any, name: str, array: np.ndarray) -> None:
    """Add one array to the digest: its name, dtype, shape and bytes, as format 1 defines
    them (through ``np.ascontiguousarray``, which shows a 0-d array as shape (1,))."""
    array = np.ascontiguousarray(array)  # no copy for the C-contiguous buffers of a state
    digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode("utf-8"))
    digest.update(array)


def _write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; keep the mode an existing checkpoint had.
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable where the platform allows opening a directory.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _to_json(where: str, value: Any) -> Any:
    if isinstance(value, Schedule):
        return {"__schedule__": value.as_dict()}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json(where, item) for item in value]
    if callable(value):
        raise TypeError(f"{where} is a callable adamcore cannot save; use an adamcore.schedule.Schedule "
                        "(or set a float) before saving")
    raise TypeError(f"{where} = {value!r} ({type(value).__name__}) cannot be saved in a checkpoint")


# ------------------------------------------------------------------------------- load


def load(optimizer: Any, path: PathLike) -> None:
    """Load a checkpoint written by ``save`` into ``optimizer``, or raise
    ``CheckpointError`` and leave it exactly as it was."""
    path = os.fspath(path)
    meta, arrays = _read(path)
    if meta.get("family") != optimizer._family.name:
        raise CheckpointError(f"{path} holds {meta.get('optimizer')} state, which "
                              f"{type(optimizer).__name__} cannot use")
    try:
        groups = []
        for group in meta["param_groups"]:
            groups.append({key: _from_json(value) for key, value in group.items()})
        state: Dict[int, Dict[str, Any]] = {}
        for index, step in meta["steps"].items():
            state[int(index)] = {"step": step}
        for name, array in arrays.items():
            index, _, buffer = name.partition(".")
            state[int(index)][buffer] = array
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path} has an inconsistent layout: {err!r}") from None
    del arrays  # the state dict holds the only reference: no copy stays behind
    try:
        optimizer._apply_state_dict({"state": state, "param_groups": groups}, owned=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} does not match this optimizer: {err}") from err


def _read(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The metadata and arrays of a checkpoint, each array read once into its own
    memory, after every check of the file itself."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise CheckpointError(f"{path} is not a readable adamcore checkpoint (truncated or "
                              f"corrupted?): not an .npz archive ({err})") from None
    with archive:
        try:
            members = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"unexpected member {info.filename!r}")
                members[info.filename[:-4]] = info
            meta_info, digest_info = members.pop("meta", None), members.pop("digest", None)
            if meta_info is None or digest_info is None:
                raise CheckpointError(f"{path} is an .npz file but not an adamcore checkpoint "
                                      "(no metadata)")
            meta_bytes = _read_member(archive, meta_info).tobytes()
            meta = _checked_meta(path, meta_bytes)
            expected = _read_member(archive, digest_info).tobytes().decode("ascii", "replace")
            digest = hashlib.sha256(meta_bytes)
            arrays = {}
            for name in sorted(members):
                arrays[name] = _read_member(archive, members[name])
                _hash_member(digest, name, arrays[name])
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{path} is not a readable adamcore checkpoint (truncated or "
                                  f"corrupted?): {err}") from None
    if expected != digest.hexdigest():
        raise CheckpointError(f"{path} is corrupted: its content does not match its SHA-256 digest")
    return meta, arrays


def _checked_meta(path: str, meta_bytes: bytes) -> Dict[str, Any]:
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path} has corrupted metadata: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise CheckpointError(f"{path} is not an adamcore optimizer checkpoint")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer adamcore (checkpoint format version "
                              f"{version}; this adamcore reads versions up to {FORMAT_VERSION}): "
                              "upgrade adamcore to load it")
    return meta


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, read in chunks straight into a new array. The header must
    agree with the member's size before anything is allocated; reading to the end makes
    zipfile check the CRC."""
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"{info.filename} has unsupported .npy version {version}")
        if dtype.hasobject:
            raise ValueError(f"{info.filename} holds Python objects")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != handle.tell() + nbytes:
            raise ValueError(f"{info.filename}: its header describes {nbytes} bytes of data, the "
                             f"archive holds {info.file_size - handle.tell()}")
        array = np.empty(shape[::-1] if fortran_order else shape, dtype=dtype)
        if nbytes:
            memory = memoryview(array).cast("B")
            done = 0
            while done < nbytes:
                chunk = handle.read(min(_CHUNK, nbytes - done))
                if not chunk:
                    raise EOFError(f"{info.filename} ends early")
                memory[done:done + len(chunk)] = chunk
                done += len(chunk)
        if handle.read(1):
            raise ValueError(f"{info.filename} has bytes past its data")
    return array.T if fortran_order else array


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__schedule__"}:
        return schedule_from_dict(value["__schedule__"])
    if isinstance(value, list):  # JSON has no tuples; group settings (betas) are tuples
        return tuple(_from_json(item) for item in value)
    return value
