"""kim_appliance.testing, the vendors' pytest plugin and context managers (issue 7 item 3).

The plugin is shown the way a vendor meets it: ``pytester`` writes a conftest-free test file
into an empty directory and runs pytest on it. Every inner run reuses one template data dir
(``--kim-data-dir``), so the demo setup is made once for this module; the runs that show the
template cache of the user's cache directory (issue 15) point it into a temporary directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import tomllib
from pathlib import Path

import pytest
import trio

import kim_appliance.testing as kim_testing
from kim_appliance.config import load as load_config
from kim_appliance.errors import ConfigError
from kim_appliance.store.passwords import verify_password
from kim_appliance.testing import (
    ApplianceStartError,
    FaultSwitchError,
    KimAppliance,
    KimApplianceThread,
    copy_template,
    fast_hash,
    make_template,
    running_appliance,
    write_config,
)
from kim_appliance.testing._cache import cached_template, template_key

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "kim_appliance.testing.plugin"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("testing-template") / "kim-data")


def _plugin_args(template: Path | None) -> list[str]:
    """The inner run's options: the template (None: the plugin's own, from the user's cache
    directory), and the plugin itself unless the installed kim-appliance already registers it
    through its pytest11 entry point."""
    args = ["-p", "no:cacheprovider"]
    if template is not None:
        args += ["--kim-data-dir", str(template)]
    installed = importlib.metadata.entry_points(group="pytest11", name="kim_appliance")
    if not installed:
        args += ["-p", PLUGIN]
    return args


def _docstring_example() -> str:
    """The ten-line example at the top of kim_appliance.testing's docstring (the README copies
    it), as the test file a vendor would paste."""
    doc = kim_testing.__doc__ or ""
    block = doc.split("A test file, as it is::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.mark.slow
def test_vendor_test_file_sends_and_fetches_through_the_clientmodul(
    pytester: pytest.Pytester, template: Path
) -> None:
    """KOM-LE-A_2019, KOM-LE-A_2048: the docstring's example, pasted into a vendor's test file
    without a conftest, sends through the Clientmodul with smtplib and reads the mail
    decrypted (X-KIM-DecryptionResult 00) with poplib; fresh appliances do not share
    mailboxes; endpoints.json exists while an appliance runs and is gone after."""
    example = _docstring_example()
    assert "def test_arztbrief_arrives(kim_appliance)" in example
    pytester.makepyfile(test_readme_example=example)
    pytester.makepyfile(
        test_fresh=r"""
        import json
        from email import message_from_bytes
        from pathlib import Path

        def _mail(a, b, body):
            return f"From: {a.address}\r\nTo: {b.address}\r\nSubject: x\r\n\r\n{body}\r\n"

        def test_first_sends(kim_appliance_fresh):
            app = kim_appliance_fresh
            weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
            with app.smtp(weber) as smtp:
                smtp.sendmail(weber.address, [klein.address], _mail(weber, klein, "erster"))
            pop = app.pop3(klein)
            count, _ = pop.stat()
            _, lines, _ = pop.retr(1)
            pop.quit()
            assert count == 1
            mail = message_from_bytes(b"\r\n".join(lines))
            assert mail["X-KIM-DecryptionResult"] == "00"
            assert "erster" in mail.get_payload(decode=True).decode()
            endpoints = app.data_dir / "endpoints.json"
            assert json.loads(endpoints.read_text())["clientmodul"]["smtp"].endswith(
                f":{app.clientmodul_smtp[1]}"
            )
            Path("seen-data-dirs.txt").open("a").write(f"{app.data_dir}\n")

        def test_second_sees_an_empty_mailbox(kim_appliance_fresh):
            app = kim_appliance_fresh
            pop = app.pop3("zahnarzt.klein")
            count, _ = pop.stat()
            pop.quit()
            assert count == 0
            Path("seen-data-dirs.txt").open("a").write(f"{app.data_dir}\n")
        """
    )
    result = pytester.runpytest_inprocess(*_plugin_args(template))
    result.assert_outcomes(passed=3)
    seen = (pytester.path / "seen-data-dirs.txt").read_text().split()
    assert len(set(seen)) == 2, "each kim_appliance_fresh runs in a data dir of its own"
    for data_dir in seen:
        assert (Path(data_dir) / "demo.json").exists()
        assert not (Path(data_dir) / "endpoints.json").exists(), "endpoints.json left behind"


@pytest.mark.slow
def test_vendor_trio_test_uses_running_appliance(pytester: pytest.Pytester, template: Path) -> None:
    """KOM-LE-A_2019: a trio test starts its own appliance from the plugin's ``kim_template``
    with ``running_appliance`` and a config override, and reads what the appliance
    reports."""
    pytester.makepyfile(
        test_trio_vendor="""
        import pytest
        import trio
        from kim_appliance.testing import running_appliance

        @pytest.mark.trio
        async def test_in_trio(kim_template):
            overrides = {"fachdienst": {"max_message_size": 4096}}
            async with running_appliance(template=kim_template, config=overrides) as app:
                assert (app.data_dir / "endpoints.json").exists()
                assert "max_message_size = 4096" in (app.data_dir / "config.toml").read_text()
                assert set(app.fachdienste) == {
                    "fd1.kim.telematik-test", "fd2.kim.telematik-test"
                }
                weber = app.participant(lambda p: p.keys == "RSA")
                smtp = await trio.to_thread.run_sync(app.smtp, weber)
                code, _ = await trio.to_thread.run_sync(smtp.noop)
                await trio.to_thread.run_sync(smtp.quit)
                assert code == 250
        """
    )
    result = pytester.runpytest_inprocess(*_plugin_args(template))
    result.assert_outcomes(passed=1)


def test_start_failure_names_the_cause(template: Path, tmp_path: Path) -> None:
    """A config override the appliance refuses stops the start with ApplianceStartError
    naming the key, the ConfigError chained; no thread and no endpoints.json stay behind."""
    data_dir = tmp_path / "kim-data"
    # another test's session appliance may be running: only a thread this test left counts
    before = {t for t in threading.enumerate() if t.name == "kim-appliance"}
    with (
        pytest.raises(ApplianceStartError, match="no_such_key") as raised,
        KimApplianceThread(data_dir, template=template, config={"fachdienst": {"no_such_key": 1}}),
    ):
        pytest.fail("the appliance started with an unknown config key")
    assert isinstance(raised.value.__cause__, ConfigError)
    assert "[fachdienst]" in str(raised.value)
    assert not (data_dir / "endpoints.json").exists()
    assert not [t for t in threading.enumerate() if t.name == "kim-appliance" and t not in before]


def test_start_failure_of_a_fresh_fixture_is_reported(
    pytester: pytest.Pytester, template: Path
) -> None:
    """The fixture's error (not a hang, not an exception group) tells the vendor what was
    wrong with the ``kim_config`` marker."""
    pytester.makepyfile(
        test_bad_config="""
        import pytest

        @pytest.mark.kim_config({"clientmodul": {"prefer_ecc": "yes"}})
        def test_never_runs(kim_appliance_fresh):
            pass
        """
    )
    result = pytester.runpytest_inprocess(*_plugin_args(template))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ApplianceStartError*prefer_ecc: expected bool*"])


async def test_running_appliance_lifecycle_and_faults(template: Path, tmp_path: Path) -> None:
    """KOM-LE-A_2019: ``running_appliance`` writes endpoints.json while running and removes it
    after; ``fault()`` switches a participant's card out and in through the Konnektor admin
    API; an unknown card is refused naming the field."""
    data_dir = tmp_path / "kim-data"
    async with running_appliance(data_dir, template=template) as app:
        assert (data_dir / "endpoints.json").exists()
        weber = app.participant("praxis.weber@fd1.kim.telematik-test")
        status = await trio.to_thread.run_sync(lambda: app.fault(card_removed=weber))
        card = next(c for c in status["cards"] if c["iccsn"] == weber.iccsn)
        assert card["inserted"] is False
        status = await trio.to_thread.run_sync(lambda: app.fault(clear=True))
        card = next(c for c in status["cards"] if c["iccsn"] == weber.iccsn)
        assert card["inserted"] is True
        with pytest.raises(FaultSwitchError, match="card_removed"):
            await trio.to_thread.run_sync(lambda: app.fault(card_removed="0000"))
    assert not (data_dir / "endpoints.json").exists()


async def _fail_inside(data_dir: Path, template: Path) -> None:
    async with running_appliance(data_dir, template=template):
        raise KeyError("the block's own error")


async def test_error_of_the_block_comes_out_as_itself(template: Path, tmp_path: Path) -> None:
    """An exception of the ``async with`` block propagates as itself (not wrapped in an
    exception group), after the appliance stopped."""
    data_dir = tmp_path / "kim-data"
    with pytest.raises(KeyError, match="the block's own error"):
        await _fail_inside(data_dir, template)
    assert not (data_dir / "endpoints.json").exists()


async def test_temporary_data_dir_is_removed(template: Path) -> None:
    """Without a data dir the appliance runs in a temporary one, gone afterwards."""
    async with running_appliance(template=template) as app:
        data_dir = app.data_dir
        assert (data_dir / "endpoints.json").exists()
        assert app.tls_ca.is_file()
    assert not data_dir.exists()


def test_copy_template_points_demo_json_into_the_copy(template: Path, tmp_path: Path) -> None:
    """The exported key paths of demo.json name the copy's files, so a vendor's interop tool
    reads the keys of the appliance it talks to; a non-empty target is refused."""
    copy = copy_template(template, tmp_path / "copy")
    demo = json.loads((copy / "demo.json").read_text())
    paths = [p for entry in demo["participants"] for p in entry["export"]["enc_key"]]
    paths += demo["trust_anchors"]
    assert paths
    for path in paths:
        assert Path(path).is_relative_to(copy), path
        assert Path(path).is_file(), path
    with pytest.raises(Exception, match="not empty"):
        copy_template(template, copy)


def test_write_config_merges_into_config_toml(template: Path, tmp_path: Path) -> None:
    """Overrides are merged table by table: the domains and other keys of the template stay."""
    copy = copy_template(template, tmp_path / "copy")
    write_config(
        copy,
        {
            "fachdienst": {"max_message_size": 4096, "relay_map": {"x.kim.telematik-test": "h:1"}},
            "clientmodul": {"prefer_ecc": False},
        },
    )
    config = load_config(copy)
    assert config.fachdienst.max_message_size == 4096
    assert config.fachdienst.relay_map == {"x.kim.telematik-test": "h:1"}
    assert config.clientmodul.prefer_ecc is False
    assert [d.domain for d in config.fachdienst.domains] == [
        "fd1.kim.telematik-test",
        "fd2.kim.telematik-test",
    ]
    assert config.directory.ldap_port == 3389  # untouched


def test_fast_hash_is_a_valid_password_hash() -> None:
    """KOM-LE-A_2164: the template's fast test logins are salted scrypt hashes the store's
    check accepts (and rejects a wrong password with)."""
    hashed = fast_hash("geheim")
    assert hashed.startswith("scrypt$1024$")
    assert verify_password("geheim", hashed)
    assert not verify_password("falsch", hashed)


def test_plugin_is_declared_and_cheap_to_load() -> None:
    """pyproject declares the pytest11 entry point; importing the plugin (which every pytest
    run does) loads none of the appliance's modules."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"kim_appliance": PLUGIN}
    probe = (
        f"import sys, {PLUGIN}; "
        "heavy = [m for m in ('kim_appliance.appliance', 'kim_appliance.testing._appliance', "
        "'cryptography', 'starlette') if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_participants_are_found_by_address_local_part_or_predicate(template: Path) -> None:
    """The typed view of demo.json: every participant with its card and usernames; a name
    that is not there is refused with the known addresses listed."""
    endpoints = {
        "tls_ca": str(template / "pki" / "tls-ca.pem"),
        "clientmodul": {"smtp": "127.0.0.1:1", "pop3": "127.0.0.1:2"},
        "fachdienste": {"fd1.kim.telematik-test": {"smtp": "[::1]:3", "pop3": "[::1]:4"}},
        "konnektor": {"sds": "https://127.0.0.1:5/connector.sds"},
        "directory": {"ldap": "127.0.0.1:6", "base_dn": "dc=data,dc=vzd"},
    }
    app = KimAppliance.from_data_dir(template, endpoints)
    assert app.fachdienste["fd1.kim.telematik-test"].pop3 == ("::1", 4)
    assert {p.keys for p in app.participants} >= {"RSA", "ECC", "RSA+ECC"}
    meyer = app.participant(lambda p: p.card_type == "HBA")
    assert app.participant("DR.MEYER@fd2.kim.telematik-test") is meyer
    assert app.participant("dr.meyer") is meyer
    assert meyer.pop3_username.startswith(meyer.address + "#")
    assert len(meyer.enc_certs) == len(meyer.enc_keys) >= 1
    with pytest.raises(LookupError, match=r"nobody.*known: .*praxis\.weber@"):
        app.participant("nobody")


# --- the template cache (issue 15: the fixture starts in about a second) ------------------------


class _Counted:
    """A template maker that copies the module's real template and counts its calls."""

    def __init__(self, template: Path) -> None:
        self.template = template
        self.calls = 0

    def __call__(self, data_dir: Path) -> Path:
        self.calls += 1
        return copy_template(self.template, data_dir)


def test_cached_template_is_made_once_per_key_and_reused(template: Path, tmp_path: Path) -> None:
    """The first call makes the entry, later ones hand out the same finished one; another
    version (another key) never shares it; the cache directory is private (0700)."""
    make = _Counted(template)
    first = cached_template(make, root=tmp_path / "cache", key="1.0.0-aaaa")
    second = cached_template(make, root=tmp_path / "cache", key="1.0.0-aaaa")
    other = cached_template(make, root=tmp_path / "cache", key="1.1.0-aaaa")
    try:
        assert (first.built, second.built, other.built) == (True, False, True)
        assert first.data_dir == second.data_dir != other.data_dir
        assert make.calls == 2
        assert (first.data_dir / "demo.json").is_file()
        assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
        entries = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
        assert len(entries) == 2
        assert entries[0].startswith("template-1.0.0-aaaa-")
        assert entries[1].startswith("template-1.1.0-aaaa-")
    finally:
        for held in (first, second, other):
            held.release()


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    """An error of the maker propagates; no entry (finished or half) is left to be found."""

    def broken(data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        (data_dir / "demo.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cached_template(broken, root=tmp_path, key="1.0.0-aaaa")
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_an_old_entry_is_replaced_and_removed_once_nobody_holds_it(
    template: Path, tmp_path: Path
) -> None:
    """An entry older than max_age is made again; the old one is removed only when no
    process holds it (a session still copying from it keeps it)."""
    make = _Counted(template)
    old = cached_template(make, root=tmp_path, key="1.0.0-aaaa")
    os.utime(old.data_dir.parent / "ready.json", (0, 0))  # long unused
    ready = json.loads((old.data_dir.parent / "ready.json").read_text())
    ready["created"] = 0
    (old.data_dir.parent / "ready.json").write_text(json.dumps(ready))
    new = cached_template(make, root=tmp_path, key="1.0.0-aaaa", max_age=3600)
    assert new.built
    assert new.data_dir != old.data_dir
    assert old.data_dir.is_dir(), "removed while another session still held it"
    old.release()
    os.utime(old.data_dir.parent / "ready.json", (0, 0))
    newest = cached_template(make, root=tmp_path, key="1.0.0-bbbb", max_age=3600)
    assert not old.data_dir.exists()
    assert new.data_dir.is_dir()
    new.release()
    newest.release()


_RACE = """
import sys, time
from pathlib import Path
from kim_appliance.testing import copy_template
from kim_appliance.testing._cache import cached_template

def make(data_dir):
    time.sleep(1.0)  # long enough for the other process to arrive while this one builds
    return copy_template(Path(sys.argv[2]), data_dir)

held = cached_template(make, root=Path(sys.argv[1]), key="1.0.0-race")
print(held.built, held.data_dir)
"""


def test_two_processes_at_once_make_one_entry(template: Path, tmp_path: Path) -> None:
    """Two pytest processes starting together: one makes the entry (under the lock file),
    the other waits and uses it; neither sees half of it."""
    (tmp_path / "race.py").write_text(_RACE)
    processes = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "race.py"), str(tmp_path / "cache"), str(template)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    answers = sorted(out.split() for out, _ in outputs)
    assert [built for built, _ in answers] == ["False", "True"]
    assert answers[0][1] == answers[1][1]
    assert (Path(answers[0][1]) / "demo.json").is_file()
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1, entries


def test_the_key_names_the_installed_version_and_the_code() -> None:
    key = template_key()
    version, _, digest = key.rpartition("-")
    assert version == importlib.metadata.version("kim-appliance")
    assert len(digest) == 16
    assert int(digest, 16) >= 0
    assert template_key() == key


@pytest.mark.slow
def test_vendor_run_reuses_the_cached_template_and_shows_no_warnings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """issue 15: a vendor's test run (its own process, none of our pytest settings) shows none
    of our dependencies' warnings (ldap3's DeprecationWarning appeared in every one), and the
    second run starts its appliance from the template the first one left in the user's cache
    directory instead of making a new one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    pytester.makepyfile(
        test_vendor="""
        def test_sees_the_demo(kim_appliance):
            assert kim_appliance.participant("praxis.weber").card_type == "SMC-B"
        """
    )
    args = [*_plugin_args(None), "--durations=1", "-W", "default"]
    first = pytester.runpytest_subprocess(*args, timeout=300)
    first.assert_outcomes(passed=1)
    cache = tmp_path / "xdg" / "kim-appliance"
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    made = json.loads((entry / "ready.json").read_text())["created"]
    second = pytester.runpytest_subprocess(*args, timeout=300)
    second.assert_outcomes(passed=1)
    assert [p for p in cache.iterdir() if p.is_dir()] == [entry]
    assert json.loads((entry / "ready.json").read_text())["created"] == made
    for result in (first, second):
        output = "\n".join(result.outlines + result.errlines)
        assert "warnings summary" not in output, output
        assert "Warning" not in output, output
