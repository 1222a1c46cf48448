"""`edgefleet keys init|rotate` over the real update repositories."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from edgefleet.tools.cli import cli


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _init(tmp_path: Path) -> tuple[Path, Path]:
    data, offline = tmp_path / "data", tmp_path / "offline"
    code, out = _invoke("keys", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    assert code == 0, out
    return data, offline


def test_init_writes_private_keys_0600_and_prints_none(tmp_path: Path) -> None:
    data, offline = _init(tmp_path)
    online = sorted(p.name for p in (data / "keys").iterdir())
    off = sorted(p.name for p in offline.iterdir())
    assert [n.split("-")[0] + "-" + n.split("-")[1] for n in off].count("image-root") == 3
    assert any(n.startswith("image-targets-") for n in off)
    assert any(n.startswith("director-root-") for n in off)
    assert not any(n.startswith(("image-root-", "image-targets-")) for n in online)
    for path in [*(data / "keys").iterdir(), *offline.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    root = json.loads((data / "repo" / "image" / "metadata" / "root.json").read_text())
    assert root["signed"]["roles"]["root"]["threshold"] == 2
    assert len(root["signed"]["roles"]["root"]["keyids"]) == 3


def test_no_key_material_in_output(tmp_path: Path) -> None:
    data, offline = tmp_path / "data", tmp_path / "offline"
    code, out = _invoke("keys", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    assert code == 0
    assert "PRIVATE KEY" not in out
    for path in offline.iterdir():
        body = "".join(path.read_text().splitlines()[1:-1])
        assert body[:40] not in out


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    data, offline = _init(tmp_path)
    code, out = _invoke("keys", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    assert code == 1
    assert "refusing to overwrite" in out


def test_threshold_above_keys_is_refused(tmp_path: Path) -> None:
    code, out = _invoke("keys", "init", "--data-dir", str(tmp_path), "--root-keys", "2",
                        "--root-threshold", "3")
    assert code == 2
    assert "threshold" in out


def test_rotate_timestamp_makes_a_new_root_and_retires_the_old_key(tmp_path: Path) -> None:
    data, offline = _init(tmp_path)
    old = {p.name for p in (data / "keys").glob("image-timestamp-*.pem")}
    code, out = _invoke("keys", "rotate", "timestamp", "--data-dir", str(data),
                        "--offline-dir", str(offline))
    assert code == 0, out
    new = {p.name for p in (data / "keys").glob("image-timestamp-*.pem")}
    assert new and not (new & old)
    metadata = data / "repo" / "image" / "metadata"
    root = json.loads((metadata / "2.root.json").read_text())["signed"]
    assert root["version"] == 2
    keyids = root["roles"]["timestamp"]["keyids"]
    assert len(keyids) == 1 and keyids[0].startswith(next(iter(new)).split("-")[2][:16])


def test_rotate_without_the_offline_root_keys_says_so(tmp_path: Path) -> None:
    data, _ = _init(tmp_path)
    code, out = _invoke("keys", "rotate", "targets", "--data-dir", str(data))
    assert code == 1
    assert "root key" in out and "offline" in out
