"""The path guard against real files, real symlinks and real hard links.

Every trick is built on disk: symlinks to the vault (direct, through a folder, chained,
relative with ``..``), a hard link to a vault file, a symlink planted as the final component of
a write, and a folder swapped for a symlink after the check. The guard must refuse each with
``AccessDenied`` and leave the vault untouched, while ordinary files keep working.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyra_client.errors import AccessDenied
from pyra_client.paths import Layout
from pyra_daemon.pathguard import PathGuard


@pytest.fixture
def layout(short_dir: Path) -> Layout:
    layout = Layout(short_dir / "home")
    for folder in (layout.home, layout.vault_dir, layout.run_dir, layout.memory_dir):
        folder.mkdir(mode=0o700, parents=True)
    (layout.vault_dir / "secrets.age").write_bytes(b"age-encryption.org/v1\nSECRET")
    (layout.vault_dir / "identity.txt").write_text("AGE-SECRET-KEY-1XYZ\n")
    layout.db_file.write_bytes(b"SQLite format 3\0")
    layout.pid_file.write_text("42\n")
    (layout.run_dir / "token").write_text("tok\n")
    return layout


@pytest.fixture
def guard(layout: Layout) -> PathGuard:
    return PathGuard.for_layout(layout)


@pytest.fixture
def outside(short_dir: Path) -> Path:
    folder = short_dir / "outside"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    return folder


def test_ordinary_files_are_read_listed_and_written(guard: PathGuard, outside: Path) -> None:
    data, size = guard.read_bytes(outside / "notes.txt", 100)
    assert (data, size) == (b"hello\n", 6)
    assert [e.name for e in guard.list_dir(outside)] == ["notes.txt"]
    written = guard.write_bytes(outside / "new.txt", b"abc")
    assert written == (outside / "new.txt").resolve()
    assert (outside / "new.txt").read_bytes() == b"abc"


def test_read_is_capped_but_reports_the_full_size(guard: PathGuard, outside: Path) -> None:
    (outside / "big.bin").write_bytes(b"x" * 10_000)
    data, size = guard.read_bytes(outside / "big.bin", 100)
    assert len(data) == 100
    assert size == 10_000


@pytest.mark.parametrize(
    "target",
    ["vault", "vault/secrets.age", "vault/identity.txt", "pyra.db", "pyra.pid", "run/token"],
)
def test_protected_paths_are_refused_directly(
    guard: PathGuard, layout: Layout, target: str
) -> None:
    path = layout.home / target
    with pytest.raises(AccessDenied, match="private files"):
        guard.check(path)
    with pytest.raises(AccessDenied):
        guard.check(path, write=True)


def test_db_siblings_are_protected_even_before_they_exist(guard: PathGuard, layout: Layout) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        with pytest.raises(AccessDenied):
            guard.check(layout.home / f"pyra.db{suffix}", write=True)


def test_symlink_to_a_vault_file_is_refused(
    guard: PathGuard, layout: Layout, outside: Path
) -> None:
    link = outside / "innocent.txt"
    link.symlink_to(layout.vault_dir / "secrets.age")
    with pytest.raises(AccessDenied, match="private files"):
        guard.read_bytes(link, 1000)


def test_symlinked_folder_into_the_vault_is_refused(
    guard: PathGuard, layout: Layout, outside: Path
) -> None:
    (outside / "docs").symlink_to(layout.vault_dir)
    with pytest.raises(AccessDenied):
        guard.read_bytes(outside / "docs" / "identity.txt", 1000)
    with pytest.raises(AccessDenied):
        guard.list_dir(outside / "docs")
    with pytest.raises(AccessDenied):
        guard.write_bytes(outside / "docs" / "planted.txt", b"x")
    assert not (layout.vault_dir / "planted.txt").exists()


def test_chained_and_relative_symlinks_are_followed_to_the_end(
    guard: PathGuard, layout: Layout, outside: Path
) -> None:
    (outside / "a").symlink_to("b")
    (outside / "b").symlink_to(os.path.relpath(layout.vault_dir, outside))
    with pytest.raises(AccessDenied):
        guard.read_bytes(outside / "a" / "secrets.age", 1000)


def test_dotdot_after_a_symlink_is_resolved_like_the_kernel_does(
    guard: PathGuard, layout: Layout, outside: Path
) -> None:
    # outside/deep -> <home>/memory, so outside/deep/../vault is <home>/vault for the kernel,
    # although a lexical normalisation would say outside/vault.
    (outside / "deep").symlink_to(layout.memory_dir)
    sneaky = outside / "deep" / ".." / "vault" / "secrets.age"
    assert sneaky.exists()  # the kernel does reach the vault this way
    with pytest.raises(AccessDenied):
        guard.read_bytes(sneaky, 1000)


def test_hard_link_to_a_vault_file_is_refused(
    guard: PathGuard, layout: Layout, short_dir: Path
) -> None:
    # A hard link must live on the same file system, hence in the same temporary tree.
    link = short_dir / "copy.age"
    os.link(layout.vault_dir / "secrets.age", link)
    with pytest.raises(AccessDenied, match="private files"):
        guard.read_bytes(link, 1000)


def test_write_through_a_final_symlink_is_refused_even_outside_the_vault(
    guard: PathGuard, outside: Path
) -> None:
    (outside / "link.txt").symlink_to(outside / "notes.txt")
    with pytest.raises(AccessDenied, match="symlink"):
        guard.write_bytes(outside / "link.txt", b"overwritten")
    assert (outside / "notes.txt").read_text() == "hello\n"


def test_write_is_atomic_and_keeps_the_mode(guard: PathGuard, outside: Path) -> None:
    target = outside / "script.sh"
    target.write_text("old")
    target.chmod(0o750)
    guard.write_bytes(target, b"#!/bin/sh\necho new\n")
    assert target.read_text() == "#!/bin/sh\necho new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert [p.name for p in outside.iterdir() if "pyra-tmp" in p.name] == []


def test_write_can_create_parents_outside_only(
    guard: PathGuard, layout: Layout, outside: Path
) -> None:
    written = guard.write_bytes(outside / "x" / "y" / "z.txt", b"deep", make_parents=True)
    assert written.read_bytes() == b"deep"
    with pytest.raises(AccessDenied):
        guard.write_bytes(layout.vault_dir / "sub" / "z.txt", b"deep", make_parents=True)
    assert not (layout.vault_dir / "sub").exists()


def test_folder_swapped_for_a_symlink_after_the_check_is_caught(
    guard: PathGuard, layout: Layout, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate the race: the check sees a real folder, then the folder becomes a symlink to
    # the vault before the open. The descriptor check must notice where the file really is.
    folder = outside / "work"
    folder.mkdir()
    (folder / "secrets.age").write_text("decoy")
    real_check = guard.check

    def check_then_swap(path: str | os.PathLike[str], *, write: bool = False) -> Path:
        resolved = real_check(path, write=write)
        (folder / "secrets.age").unlink()
        folder.rmdir()
        folder.symlink_to(layout.vault_dir)
        return resolved

    monkeypatch.setattr(guard, "check", check_then_swap)
    # The kernel follows the swapped folder and opens the real secrets.age; the check on the
    # open descriptor (its inode, its /proc path) refuses it before a byte is read.
    with pytest.raises(AccessDenied):
        guard.read_bytes(folder / "secrets.age", 1000)


def test_fifo_does_not_hang_the_reader(guard: PathGuard, outside: Path) -> None:
    fifo = outside / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="regular file"):
        guard.read_bytes(fifo, 10)


def test_listing_shows_symlinks_without_following_them(
    guard: PathGuard, layout: Layout, outside: Path
) -> None:
    (outside / "v").symlink_to(layout.vault_dir)
    (outside / "sub").mkdir()
    entries = {e.name: e for e in guard.list_dir(outside)}
    assert entries["v"].kind == "symlink"
    assert entries["v"].target == str(layout.vault_dir)
    assert entries["sub"].kind == "dir"
    assert entries["notes.txt"].kind == "file"


def test_home_reached_through_a_symlink_is_still_protected(short_dir: Path) -> None:
    real_home = short_dir / "real-home"
    (real_home / "vault").mkdir(parents=True)
    (real_home / "vault" / "secrets.age").write_text("x")
    alias = short_dir / "alias"
    alias.symlink_to(real_home)
    guard = PathGuard.for_layout(Layout(alias))
    with pytest.raises(AccessDenied):
        guard.read_bytes(real_home / "vault" / "secrets.age", 10)


def test_nul_in_a_path_is_refused(guard: PathGuard) -> None:
    with pytest.raises(AccessDenied, match="NUL"):
        guard.check("/tmp/a\0b")


def test_open_write_fd_appends_in_place(guard: PathGuard, outside: Path) -> None:
    with guard.open_write_fd(outside / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fd:
        os.write(fd, b"one\n")
    with guard.open_write_fd(outside / "log.txt", os.O_WRONLY | os.O_APPEND) as fd:
        os.write(fd, b"two\n")
    assert (outside / "log.txt").read_text() == "one\ntwo\n"
    (outside / "ln").symlink_to(outside / "log.txt")
    with pytest.raises(AccessDenied), guard.open_write_fd(outside / "ln"):
        pass
