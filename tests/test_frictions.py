"""Small things a new user meets first: a typo'd config key gets a suggestion, every option of
``server`` and ``md`` says what it is (with its default), ``analyze`` says when a folder is not
there and what burn-in it discarded, energy.png's legend has its unit, the trainer logs short numbers."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from slhmc.cli import build_parser, main
from slhmc.config import ConfigError, from_dict

from .runs import emt_labels

BASE = {"system": {"structure": "x.xyz", "temperature": 300.0}}


@pytest.mark.parametrize("patch, message", [
    ({"hmc": {"trails": 3}}, r"hmc\.trails: unknown key; did you mean `trials`\?"),
    ({"training": {"intervall": 3}}, r"training\.intervall: unknown key; did you mean `interval`\?"),
    ({"sytem": {}}, r"sytem: unknown key; did you mean `system`\?"),
    ({"hmc": {"temperature": 3}}, r"hmc\.temperature: unknown key; `temperature` belongs in \[system\]"),
    ({"hmc": {"zzz": 3}}, r"hmc\.zzz: unknown key$"),
])
def test_an_unknown_key_gets_the_closest_name(patch, message):
    with pytest.raises(ConfigError, match=message) as err:
        from_dict({**BASE, **patch}, source="c.toml")
    assert str(err.value).startswith("invalid config c.toml:")


def _options(command: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {a.option_strings[0] if a.option_strings else a.dest: a for a in sub._actions if a.dest != "help"}


def test_server_and_md_options_say_what_they_are_and_md_its_defaults():
    server = _options("server")
    for flag in ("--out", "--resume", "--no-progress"):
        assert server[flag].help, flag
    for flag, action in _options("md").items():
        assert action.help, flag
        if action.default not in (None, False):  # an option with a default states it
            assert "%(default)s" in action.help, flag
    help_text = next(a for a in build_parser()._actions if a.dest == "command").choices["md"].format_help()
    assert "(default 1000)" in help_text and "(default nve" in help_text


def test_analyze_on_a_missing_folder(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def _trials(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for t in range(n):
        e = float(-3.0 + 0.01 * rng.normal())
        out.append({"trial": t, "accepted": True, "delta_h": 0.0, "e_ref": e, "e_ml": e + 1e-3 * t, "e_chain": e,
                    "model": 0, "e_ref_old": e, "e_ml_start": e, "h_ml_drift": 0.0, "k_old": 0.1, "k_new": 0.1,
                    "n_atoms": 2, "label_id": t, "mlmd_seconds": 0.1, "dft_seconds": 0.1, "wall_seconds": t})
    return out


def test_analyze_prints_its_burn_in_and_energy_png_has_units(tmp_path, capsys, monkeypatch):
    from slhmc.analysis import analyze, plots

    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _trials(30)))
    (tmp_path / "config.json").write_text(json.dumps({"config": {"system": {"temperature": 300.0}}}))
    legends: dict[str, list[str]] = {}
    save = plots._save

    def keep_legends(fig, path):
        legends[path.name] = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_legends)
    assert analyze(tmp_path) == 0
    assert "burn-in: the first 3 of 30 trials" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["e_pot_eV_per_atom"]["discarded_trials"] == 3
    assert any(re.fullmatch(r"⟨E⟩ = -?[\d.]+ ± [\d.]+ eV/atom", t) for t in legends["energy.png"])


def test_the_trainer_logs_three_significant_digits(caplog):
    from slhmc.clients.trainer import TrainerHandler
    from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings

    trainer = TrainerHandler("cpu")
    labels = emt_labels(6, seed=2)
    for i, lab in enumerate(labels):
        trainer.labels[i] = lab
    fit, arch = trainer_settings(PotentialConfig(cutoff=4.5, hidden=[4]), TrainingConfig(max_steps=2,
                                 validation_fraction=0.3), seed=0)
    with caplog.at_level(logging.INFO, logger="slhmc.clients.trainer"):
        trainer.train(0, list(range(6)), False, fit, arch)
    line = next(r.getMessage() for r in caplog.records if "validation energy RMSE" in r.getMessage())
    numbers = re.search(r"validation energy RMSE (\S+) meV/atom, force RMSE (\S+) meV/Å", line).groups()
    assert all(len(re.sub(r"[^0-9]", "", n).lstrip("0")) <= 4 for n in numbers), line
