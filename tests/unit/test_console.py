"""setup_run_logging: what reaches the console and what only the run's log file, with real
logging handlers writing to pytest's captured stderr and to a real file."""

import logging
import sys
import warnings

import pytest

from rlkit import console
from rlkit.config import ConfigError
from rlkit.console import CONSOLE_NOISE, adopt_library_loggers, setup_run_logging

THIRD_PARTY = "somelib.engine"  # any logger outside rlkit's own


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """Put every logger (the root, and libraries `adopt_library_loggers` switched over) and
    warnings capture back as they were, so no other test sees this file's routing."""
    monkeypatch.delenv("RLKIT_LOG_LEVEL", raising=False)
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("vendored", THIRD_PARTY))]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved = {id(lg): (lg, list(lg.handlers), lg.propagate, lg.level) for lg in loggers}
    yield
    for lg, handlers, propagate, level in saved.values():
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)
    logging.captureWarnings(False)


def _emit_all():
    logging.getLogger("rlkit.trainer.update").info("rlkit says hello")
    logging.getLogger("grpo_math").info("the recipe says hello")
    logging.getLogger(THIRD_PARTY).info("engine chatter")
    logging.getLogger(THIRD_PARTY).warning("engine is worried")


def _run(tmp_path, capsys, rank=0):
    log_file = setup_run_logging(tmp_path, rank)
    _emit_all()
    for h in logging.getLogger().handlers:
        h.flush()
    return capsys.readouterr().err, log_file.read_text()


def test_rank0_console_shows_rlkit_info_and_third_party_warnings_file_holds_all(tmp_path, capsys):
    err, text = _run(tmp_path, capsys)
    assert (tmp_path / "logs" / "rank0.log").is_file()
    for line in ("rlkit says hello", "the recipe says hello", "engine is worried"):
        assert line in err and line in text
    assert "engine chatter" not in err  # third-party INFO: file only
    assert f"INFO {THIRD_PARTY}: engine chatter" in text
    assert len(err.strip().splitlines()) == 3


def test_console_noise_goes_to_the_file_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(console, "CONSOLE_NOISE", (("somelib", "is worried"),))
    err, text = _run(tmp_path, capsys)
    assert "engine is worried" not in err and "engine is worried" in text
    assert "rlkit says hello" in err
    # the prefix is a logger-name prefix, not a substring: "somelibrary" is not "somelib"
    logging.getLogger("somelibrary").warning("is worried too")
    assert "is worried too" in capsys.readouterr().err


def test_shipped_noise_never_mutes_rlkit_and_matches_narrowly():
    assert CONSOLE_NOISE, "the shipped list is empty: nothing was judged noise"
    own = console.OWN_LOGGERS
    for prefix, substring in CONSOLE_NOISE:
        # rlkit's own lines are never noise; an empty or tiny substring would mute a whole library
        assert not any(prefix == p or prefix.startswith(p + ".") for p in own), prefix
        assert len(substring) >= 12, (prefix, substring)


@pytest.mark.parametrize("level", ["INFO", "debug"])
def test_rlkit_log_level_shows_everything(tmp_path, capsys, monkeypatch, level):
    monkeypatch.setenv("RLKIT_LOG_LEVEL", level)
    monkeypatch.setattr(console, "CONSOLE_NOISE", (("somelib", "is worried"),))
    err, text = _run(tmp_path, capsys)
    for line in ("rlkit says hello", "engine chatter", "engine is worried"):
        assert line in err
    logging.getLogger(THIRD_PARTY).debug("engine detail")
    assert ("engine detail" in capsys.readouterr().err) == (level == "debug")


def test_bad_rlkit_log_level_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("RLKIT_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match="RLKIT_LOG_LEVEL: got 'LOUD'; use DEBUG, INFO, WARNING or ERROR"):
        setup_run_logging(tmp_path, 0)


def test_other_ranks_show_warnings_only_and_write_their_own_file(tmp_path, capsys):
    err, text = _run(tmp_path, capsys, rank=1)
    assert (tmp_path / "logs" / "rank1.log").is_file()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[rank1] ") and "engine is worried" in lines[0]
    assert "rlkit says hello" in text and "engine chatter" in text


def test_python_warnings_land_in_the_file(tmp_path, capsys):
    setup_run_logging(tmp_path, 0)
    warnings.warn("an old API", FutureWarning, stacklevel=1)
    text = (tmp_path / "logs" / "rank0.log").read_text()
    assert "py.warnings" in text and "FutureWarning: an old API" in text


def test_calling_again_replaces_its_handlers_and_basic_config_console(tmp_path, capsys):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=False)
    setup_run_logging(tmp_path, 0)
    setup_run_logging(tmp_path, 0)
    logging.getLogger("rlkit").info("once")
    assert capsys.readouterr().err.count("once") == 1


def test_a_library_with_its_own_console_handler_is_adopted(tmp_path, capsys):
    lib = logging.getLogger("vendored")  # what vLLM, transformers and DeepSpeed do at import
    lib.addHandler(logging.StreamHandler(sys.stderr))
    lib.propagate = False
    lib.setLevel(logging.INFO)
    setup_run_logging(tmp_path, 0)
    assert "vendored" not in adopt_library_loggers()  # already adopted by setup_run_logging
    lib.info("vendored chatter")
    lib.warning("vendored worry")
    err = capsys.readouterr().err
    assert "vendored chatter" not in err and err.count("vendored worry") == 1
    assert "vendored chatter" in (tmp_path / "logs" / "rank0.log").read_text()
