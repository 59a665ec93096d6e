"""Simulated shares are the client's own setting: `I/N`, or `any/N` claimed among identical replicas with a
lock file per share that is held while the client runs (real flock, real processes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contracts.errors import ConfigError
from ops.settings import Settings, Share
from services.cli.main import main
from services.roots.client import data_source
from workers.client.share_claim import claim_share


def test_a_share_is_i_of_n_or_any_of_n_and_anything_else_names_the_setting() -> None:
    assert Share.parse("3/10") == Share(3, 10) and Share.parse("any/4") == Share(None, 4)
    assert str(Share.parse(" any/4 ")) == "any/4"
    for bad, says in (("10/10", "below N"), ("3", "I/N"), ("-1/4", "I/N"), ("1/0", "[1, 100000]"), ("٣/4", "I/N")):
        with pytest.raises(ConfigError, match="FEDBUS_SHARE") as error:
            Share.parse(bad, "FEDBUS_SHARE")
        assert says in str(error.value)


def test_replicas_claim_different_shares_until_none_is_free(tmp_path: Path) -> None:
    first, second = claim_share(tmp_path, 2, "a"), claim_share(tmp_path, 2, "b")

    assert {first.index, second.index} == {0, 1}
    with pytest.raises(ConfigError, match=r"all 2 shares .* are held by running clients"):
        claim_share(tmp_path, 2, "c")
    second.release()
    assert claim_share(tmp_path, 2, "c").index == second.index


def test_a_restarted_client_takes_back_the_share_it_held(tmp_path: Path) -> None:
    a, b = claim_share(tmp_path, 3, "a"), claim_share(tmp_path, 3, "b")
    a.release()
    b.release()

    assert claim_share(tmp_path, 3, "b").index == 1  # share 0 is free too, but b's ledger counted share 1


def test_a_share_held_by_another_process_is_free_again_once_that_process_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3]
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        assert claim_share(tmp_path, 2, "mine").index == 1  # 0 is held over there
        with pytest.raises(ConfigError):
            claim_share(tmp_path, 2, "third")
    finally:
        holder.kill()
        holder.wait(timeout=30)

    assert claim_share(tmp_path, 2, "third").index == 0  # no stale claim after a SIGKILL


_HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from workers.client.share_claim import claim_share
    claim = claim_share(Path(sys.argv[1]), 2, "other")
    print(claim.index, flush=True)
    time.sleep(120)
    """
)


def test_a_client_any_share_claims_one_its_own_folder_wins(tmp_path: Path) -> None:
    env = {"FEDBUS_SHARE": "any/2", "FEDBUS_SHARE_CLAIMS": str(tmp_path), "FEDBUS_INSTANCE_NAME": "x"}
    folder, claim, share = data_source(Settings.from_env(env))
    assert folder is None and claim is not None and share == (claim.index, 2)

    own = data_source(Settings.from_env({**env, "FEDBUS_CLIENT_DATA": str(tmp_path)}))
    assert own == (tmp_path, None, None)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "FEDBUS_CLIENT_DATA: must be set"),
        ({"FEDBUS_SHARE": "any/3"}, "FEDBUS_SHARE_CLAIMS: must be set for FEDBUS_SHARE=any/3"),
        ({"FEDBUS_SHARE": "3/3"}, "FEDBUS_SHARE: I must be below N"),
    ],
)
def test_a_client_without_data_or_with_a_bad_share_exits_2_with_one_line(
    env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("FEDBUS_CLIENT_DATA", "FEDBUS_SHARE", "FEDBUS_SHARE_CLAIMS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEDBUS_ENROLLMENT_TOKEN", "t")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert main(["client"]) == 2

    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
