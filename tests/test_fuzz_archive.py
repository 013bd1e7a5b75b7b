"""Archives and manifests, fuzzed: a bad archive is refused with ArchiveError, nothing lands
outside the target folder, nothing half-unpacked is left behind, and a size an archive
declares is checked before it is believed (no filled disk, no huge allocation, no hang).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import warnings
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserve import archive

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of stalling the run

MANIFEST = {"runtime": "python", "model": {"modelName": "m", "handler": "h.py"}}

# -- building archives ----------------------------------------------------------------------


def make_zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the fuzzing
        with zipfile.ZipFile(buffer, "w", compression=method) as zip:
            for name, data in entries:
                zip.writestr(name, data)
    return buffer.getvalue()


def make_tgz(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_header(name: bytes, size: bytes, type: bytes, link: bytes = b"") -> bytes:
    """One ustar header block with a correct checksum, so that tarfile reads its fields."""
    header = bytearray(512)
    header[0:100] = name[:100].ljust(100, b"\0")
    header[100:124] = b"0000644\0" + b"0000000\0" * 2
    header[124:136] = size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = type
    header[157:257] = link[:100].ljust(100, b"\0")
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def octal(size: int) -> bytes:
    return b"%011o\0" % size


def base256(size: int) -> bytes:
    """tarfile's encoding of sizes that do not fit 11 octal digits (negative ones too)."""
    return bytes([0x80 if size >= 0 else 0xFF]) + (size % 2**88).to_bytes(11, "big")


Outcome = namedtuple("Outcome", "refused files")


def unpack(data: bytes, name: str, **options) -> Outcome:
    """Extracts `data` saved as `name` and checks the rules every outcome must keep."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "store").mkdir()
        (root / "extracted" / "deep").mkdir(parents=True)
        source = root / "store" / name
        source.write_bytes(data)
        target = root / "extracted" / "deep" / "out"
        started = time.monotonic()
        try:
            model_dir = archive.extract(source, target, **options)
        except archive.ArchiveError as error:
            assert str(error)
            assert not target.exists(), "a refused archive left files behind"
            outcome = Outcome(True, [])
        else:
            assert model_dir == target
            files = []
            for path in target.rglob("*"):
                assert not path.is_symlink()
                assert path.is_file() or path.is_dir()
                assert path.resolve().is_relative_to(target.resolve())
                files.append(path.relative_to(target).as_posix())
            outcome = Outcome(False, sorted(files))
        assert time.monotonic() - started < 20
        # Nothing was written anywhere else: not beside the target, not beside the source.
        assert os.listdir(root / "extracted" / "deep") == ([] if outcome.refused else ["out"])
        assert sorted(os.listdir(root)) == ["extracted", "store"]
        assert os.listdir(root / "extracted") == ["deep"]
        assert os.listdir(root / "store") == [name]
    return outcome


# -- strategies -----------------------------------------------------------------------------

ARCHIVE_NAMES = st.sampled_from(["m.mar", "m.tar.gz", "m.tgz", "m.zip", "m.model", "m"])
CONTENT = st.binary(max_size=300)
PLAIN_NAMES = st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}(\.py)?", fullmatch=True)
ANY_NAMES = st.one_of(
    PLAIN_NAMES,
    st.text(max_size=40),
    st.text(alphabet="./\\:", max_size=12),
    st.lists(st.sampled_from(["..", ".", "", "a", "b", "é", "\u202e", "~", "C:", "\\"]), max_size=6)
    .map("/".join),
    st.builds(lambda head, tail: head + tail, st.sampled_from(["/", "../", "./..", "a/../../", "//"]),
              PLAIN_NAMES),
    st.integers(90, 400).map(lambda n: "x" * n),  # past 100 bytes (tar) and 255 bytes (a file name)
    st.lists(st.just("d" * 50), min_size=1, max_size=90).map("/".join),  # deep, long paths
)


def no_file_is_a_folder(entries: list[tuple[str, bytes]]) -> bool:
    names = [name for name, _ in entries]
    return not any(other.startswith(name + "/") for name in names for other in names)


ENTRIES = st.lists(st.tuples(PLAIN_NAMES, CONTENT), min_size=1, max_size=5,
                   unique_by=lambda entry: entry[0]).filter(no_file_is_a_folder)
VALID_ARCHIVES = st.one_of(
    ENTRIES.map(make_zip).map(lambda data: (data, "m.mar")),
    ENTRIES.map(lambda entries: make_zip(entries, zipfile.ZIP_STORED)).map(lambda data: (data, "m.mar")),
    ENTRIES.map(lambda entries: [(f"m/{name}", data) for name, data in entries]).map(make_tgz)
    .map(lambda data: (data, "m.tar.gz")),
)

# -- random and damaged bytes -----------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000), ARCHIVE_NAMES)
def test_random_bytes_are_refused_with_archive_error(data, name):
    assert unpack(data, name).refused


@FUZZ
@given(st.sampled_from([b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b\x08\x00", b"BZh9", b"\xfd7zXZ\x00", b"ustar"]),
       st.binary(max_size=600), ARCHIVE_NAMES)
def test_bytes_that_start_like_an_archive_are_refused_or_unpacked_inside_the_folder(magic, data, name):
    unpack(magic + data, name)


@FUZZ
@given(VALID_ARCHIVES, st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
                                min_size=1, max_size=6))
def test_an_archive_with_overwritten_bytes_is_refused_or_unpacked_inside_the_folder(archive_and_name, writes):
    data, name = archive_and_name
    mutated = bytearray(data)
    for position, chunk in writes:
        position %= len(mutated)
        mutated[position:position + len(chunk)] = chunk[: len(mutated) - position]
    unpack(bytes(mutated), name)


@FUZZ
@given(VALID_ARCHIVES, st.data())
def test_a_truncated_archive_is_refused_or_unpacked_inside_the_folder(archive_and_name, data):
    whole, name = archive_and_name
    cut = data.draw(st.integers(0, len(whole) - 1))
    outcome = unpack(whole[:cut], name)
    if name.endswith(".mar"):
        assert outcome.refused  # a zip's index is at its end


@FUZZ
@given(VALID_ARCHIVES)
def test_a_valid_archive_unpacks(archive_and_name):
    data, name = archive_and_name
    assert not unpack(data, name).refused


# -- entry names ------------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.tuples(ANY_NAMES, CONTENT), min_size=1, max_size=4))
def test_zip_entries_of_any_name_are_refused_or_land_inside_the_folder(entries):
    try:
        data = make_zip(entries)
    except IndexError:  # zipfile cannot write an empty name
        return
    unpack(data, "m.mar")


@FUZZ
@given(st.lists(st.tuples(ANY_NAMES, CONTENT), min_size=1, max_size=4))
def test_tar_entries_of_any_name_are_refused_or_land_inside_the_folder(entries):
    try:
        data = make_tgz(entries)
    except ValueError:  # tarfile cannot even write some names (a NUL in them)
        return
    unpack(data, "m.tar.gz")


@pytest.mark.parametrize("name", ["../x.py", "a/../../x.py", "/etc/x.py", "C:/x.py", "a\\..\\..\\x.py",
                                  "./../x.py", "//x.py"])
@pytest.mark.parametrize("make, suffix", [(make_zip, "m.mar"), (make_tgz, "m.tar.gz")])
def test_an_entry_that_points_outside_is_refused_as_such(name, make, suffix, tmp_path):
    source = tmp_path / suffix
    source.write_bytes(make([("m/ok.py", b"x"), (name, b"owned")]))
    with pytest.raises(archive.ArchiveError, match="outside the model folder"):
        archive.extract(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make, suffix", [(make_zip, "m.mar"), (make_tgz, "m.tar.gz")])
def test_a_name_longer_than_the_file_system_allows_is_refused_clearly(make, suffix):
    assert unpack(make([("m/" + "x" * 300, b"x")]), suffix).refused


@pytest.mark.parametrize("make, suffix", [(make_zip, "m.mar"), (make_tgz, "m.tar.gz")])
def test_unicode_names_are_unpacked_as_they_are(make, suffix):
    outcome = unpack(make([("m/モデル/ü.py", b"x"), ("m/h.py", b"y")]), suffix)
    assert "モデル/ü.py" in outcome.files or "m/モデル/ü.py" in outcome.files


# -- zip details ------------------------------------------------------------------------------


def patch_zip(data: bytes, local: dict[int, bytes], central: dict[int, bytes]) -> bytes:
    """Overwrites fields of the first entry's local header and central directory record."""
    patched = bytearray(data)
    for base, fields in ((data.find(b"PK\x03\x04"), local), (data.find(b"PK\x01\x02"), central)):
        for offset, value in fields.items():
            patched[base + offset:base + offset + len(value)] = value
    return bytes(patched)


def test_an_encrypted_zip_entry_is_refused_as_such(tmp_path):
    data = make_zip([("h.py", b"x" * 50)], zipfile.ZIP_STORED)
    flags = bytes([data[data.find(b"PK\x03\x04") + 6] | 1])  # "encrypted"
    (tmp_path / "m.mar").write_bytes(patch_zip(data, {6: flags}, {8: flags}))
    with pytest.raises(archive.ArchiveError, match="encrypted"):
        archive.extract(tmp_path / "m.mar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unknown_zip_compression_method_is_refused_as_such(tmp_path):
    data = patch_zip(make_zip([("h.py", b"x" * 50)]), {8: b"\x63\x00"}, {10: b"\x63\x00"})
    (tmp_path / "m.mar").write_bytes(data)
    with pytest.raises(archive.ArchiveError, match="compression method 99"):
        archive.extract(tmp_path / "m.mar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_name_that_is_not_utf8_is_refused_clearly():
    data = make_zip([("h.py", b"x")])
    central = data.find(b"PK\x01\x02")
    flags = int.from_bytes(data[central + 8:central + 10], "little") | 0x800  # "names are UTF-8"
    patched = bytearray(patch_zip(data, {}, {8: flags.to_bytes(2, "little")}))
    patched[data.find(b"h.py", central)] = 0xFF
    assert unpack(bytes(patched), "m.mar").refused


def test_corrupt_compressed_data_is_refused_clearly():
    data = bytearray(make_zip([("h.py", b"hello world " * 200)]))
    data[40:60] = b"\xff" * 20
    assert unpack(bytes(data), "m.mar").refused


# -- sizes: zip bombs, forged headers ---------------------------------------------------------


@FUZZ
@given(st.integers(1, 200_000), st.integers(0, 200_000), st.sampled_from(["zip", "tgz"]))
def test_an_archive_larger_than_max_bytes_is_refused_before_anything_is_written(size, max_bytes, kind):
    entries = [("m/zeros", b"\0" * size)]
    data = make_zip(entries) if kind == "zip" else make_tgz(entries)
    outcome = unpack(data, "m.mar" if kind == "zip" else "m.tar.gz", max_bytes=max_bytes)
    assert outcome.refused == (size > max_bytes)


def test_a_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    data = make_zip([(f"zeros{n}", b"\0" * 20_000_000) for n in range(3)])  # 60 MB from ~60 KB
    assert len(data) < 200_000
    (tmp_path / "bomb.mar").write_bytes(data)
    with pytest.raises(archive.ArchiveError, match="more than 50000000 bytes"):
        archive.extract(tmp_path / "bomb.mar", tmp_path / "out", max_bytes=50_000_000)
    assert not (tmp_path / "out").exists()


def test_a_zip_that_understates_its_size_writes_no_more_than_it_declared(tmp_path):
    data = make_zip([("zeros", b"\0" * 20_000_000)])
    small = (1000).to_bytes(4, "little")
    lying = patch_zip(data, {22: small}, {24: small})  # uncompressed size in both headers
    outcome = unpack(lying, "m.mar", max_bytes=10_000)
    assert outcome.refused  # the CRC does not match the 1000 bytes zipfile stops at


def test_by_default_an_archive_must_fit_in_nine_tenths_of_the_free_disk(monkeypatch):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda path: usage._replace(free=1_000_000))
    assert unpack(make_zip([("zeros", b"\0" * 950_000)]), "m.mar").refused
    assert not unpack(make_zip([("zeros", b"\0" * 850_000)]), "m.mar").refused


def test_an_archive_with_more_than_max_entries_is_refused(monkeypatch):
    monkeypatch.setattr(archive, "MAX_ENTRIES", 10)
    entries = [(f"m/f{n}", b"") for n in range(11)]
    assert unpack(make_zip(entries), "m.mar").refused
    assert unpack(make_tgz(entries), "m.tar.gz").refused
    assert not unpack(make_zip(entries[:10]), "m.mar").refused


@pytest.mark.parametrize("type", [b"x", b"g", b"L", b"K"])  # pax, global pax, GNU long name and link
@pytest.mark.parametrize("size", [octal(8**11 - 1), base256(2**60), base256(2**87)])
@pytest.mark.parametrize("compress", [False, True])
def test_a_tar_header_declaring_a_huge_record_is_refused_without_allocating_it(type, size, compress):
    data = tar_header(b"././@LongLink", size, type) + b"a" * 512 + b"\0" * 1024
    started = time.monotonic()
    assert unpack(gzip.compress(data) if compress else data, "m.tar.gz").refused
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("size", [octal(8**11 - 1), base256(2**70), base256(-(2**40)), base256(-1)])
def test_a_tar_entry_declaring_more_data_than_it_has_is_refused(size):
    data = gzip.compress(tar_header(b"m/a.py", size, b"0") + b"x" * 512 + b"\0" * 1024)
    assert unpack(data, "m.tar.gz", max_bytes=10**6).refused


PAX_KEYS = st.sampled_from(["size", "path", "linkpath", "mtime", "uid", "GNU.sparse.map", "GNU.sparse.size",
                            "GNU.sparse.numblocks", "GNU.sparse.offset", "GNU.sparse.name",
                            "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.realsize", "hdrcharset"])
PAX_VALUES = st.one_of(st.integers(-(10**20), 10**20).map(str), st.text(max_size=20),
                       st.sampled_from(["0,1,2", "1,", "-1", "../x", "/etc/passwd", "BINARY"]))


@st.composite
def pax_records(draw) -> bytes:
    records = b""
    for key, value in draw(st.lists(st.tuples(PAX_KEYS | st.text(max_size=6), PAX_VALUES), max_size=4)):
        body = f" {key}={value}\n".encode()
        length = len(body) + len(str(len(body) + 3))
        length += len(str(length)) - len(str(len(body) + 3))
        if draw(st.booleans()):
            length = draw(st.integers(-5, 10**9))  # a length that lies
        records += str(length).encode() + body
    return records


TAR_SIZES = st.one_of(st.integers(0, 4000).map(octal), st.integers(-(2**80), 2**80).map(base256),
                      st.binary(min_size=12, max_size=12))
TAR_TYPES = st.sampled_from([b"0", b"\0", b"5", b"x", b"g", b"L", b"K", b"S", b"1", b"2", b"3", b"6", b"7", b"D"]) \
    | st.binary(min_size=1, max_size=1)


@FUZZ
@given(st.lists(st.tuples(PLAIN_NAMES.map(lambda n: f"m/{n}".encode()) | st.binary(max_size=110),
                          TAR_SIZES, TAR_TYPES, st.binary(max_size=20), pax_records() | st.binary(max_size=1500)),
                min_size=1, max_size=4),
       st.booleans(), st.booleans())
def test_forged_tar_headers_are_refused_or_unpacked_inside_the_folder(blocks, end_marker, compress):
    data = b""
    for name, size, type, link, payload in blocks:
        data += tar_header(name, size, type, link) + payload + b"\0" * (-len(payload) % 512)
    if end_marker:
        data += b"\0" * 1024
    unpack(gzip.compress(data) if compress else data, "m.tar.gz", max_bytes=10**6)


# -- MANIFEST.json ----------------------------------------------------------------------------


def read_manifest_text(raw: bytes):
    """read_manifest on a model folder whose MANIFEST.json holds `raw`: a dict, or ArchiveError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / archive.MANIFEST_PATH
        path.parent.mkdir()
        path.write_bytes(raw)
        try:
            manifest = archive.read_manifest(Path(folder))
        except archive.ArchiveError as error:
            assert str(error)
            return error
    # What engine/loading.py relies on: a "model" object, strings (or null) where strings belong.
    assert isinstance(manifest, dict) and isinstance(manifest["model"], dict)
    assert "runtime" in manifest
    for fields, names in ((manifest, archive.MANIFEST_TEXT_FIELDS), (manifest["model"], archive.MODEL_TEXT_FIELDS)):
        for name in names:
            assert fields.get(name) is None or isinstance(fields[name], str)
    return manifest


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=10)
FIELD_NAMES = st.sampled_from([*archive.MODEL_TEXT_FIELDS, *archive.MANIFEST_TEXT_FIELDS, "model", "other"])


@FUZZ
@given(st.binary(max_size=300))
def test_a_manifest_of_random_bytes_is_read_or_refused_with_archive_error(raw):
    read_manifest_text(raw)


@FUZZ
@given(JSON)
def test_a_manifest_of_any_json_is_read_or_refused_with_archive_error(value):
    read_manifest_text(json.dumps(value).encode())


@FUZZ
@given(st.dictionaries(FIELD_NAMES, JSON, max_size=6), st.dictionaries(FIELD_NAMES, JSON, max_size=6))
def test_manifest_fields_of_any_type_are_read_or_refused_with_archive_error(top, model):
    read_manifest_text(json.dumps({**top, "model": model}).encode())


@FUZZ
@given(st.text(max_size=200).map(lambda text: json.dumps(MANIFEST)[: len(text) % 80] + text))
def test_a_cut_or_garbled_manifest_is_read_or_refused_with_archive_error(text):
    read_manifest_text(text.encode())


def test_a_manifest_without_model_or_runtime_gets_the_defaults():
    assert read_manifest_text(b"{}") == {"model": {}, "runtime": "python"}


@pytest.mark.parametrize("raw, reason", [
    (b"[" * 100_000, "cannot read"),                      # nested past Python's recursion limit
    (b'{"model": ' * 50_000 + b"{}" + b"}" * 50_000, "cannot read"),
    (b"{\"model\": {}, \"x\": \"" + b"a" * (2 << 20) + b"\"}", "larger than"),
    (b"\xff\xfe{}", "cannot read"),
    (b'{"model": {}, "n": 1' + b"0" * 5000 + b"}", "cannot read"),  # an integer past Python's digit limit
    (b"null", "not a JSON object"),
    (b'{"model": []}', "not a JSON object"),
    (b'{"model": {"handler": ["a.py"]}}', "model.handler must be a string"),
    (b'{"model": {"modelName": {"x": 1}}}', "model.modelName must be a string"),
    (b'{"runtime": ["python"], "model": {}}', "runtime must be a string"),
])
def test_a_manifest_that_cannot_be_used_is_refused_with_the_reason(raw, reason):
    error = read_manifest_text(raw)
    assert isinstance(error, archive.ArchiveError)
    assert reason in str(error)


def test_numbers_and_booleans_in_text_fields_become_text_as_in_torchserve():
    manifest = read_manifest_text(b'{"model": {"modelVersion": 2.0, "modelName": 7, "handler": true}}')
    assert manifest["model"] == {"modelVersion": "2.0", "modelName": "7", "handler": "true"}


def test_a_manifest_with_a_byte_order_mark_is_read():
    assert read_manifest_text(b"\xef\xbb\xbf" + json.dumps(MANIFEST).encode())["model"]["handler"] == "h.py"
