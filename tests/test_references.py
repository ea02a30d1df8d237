"""The reference-code registry: every record complete and consistent with the code it names."""

from __future__ import annotations

import importlib.util
import inspect
import typing

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import (
    CalculationFailed,
    Calculator,
    CalculatorError,
    CalculatorSetupError,
    InputError,
    SCFError,
)
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from slhmc.clients.references import (
    ASE_HARTREE,
    CODES,
    CP2K_HARTREE,
    CalculatorConfigError,
    CodeNotFoundError,
    OptionError,
    accepted_options,
    check_config,
    code_status,
    errors,
    is_stateless,
    lookup,
    make_calculator,
    reference_energy,
    resolve_factory,
)
from slhmc.clients.references.registry import OptionCheck

EXPECTED = ["emt", "lj", "morse", "pyscf", "tblite", "espresso", "socket", "cp2k", "gpaw", "vasp"]


def installed(name: str) -> bool:
    return importlib.util.find_spec(CODES[name].module.split(".")[0]) is not None and _imports(name)


def _imports(name: str) -> bool:
    try:
        resolve_factory(name)
    except CodeNotFoundError:
        return False
    return True


def test_the_registry_holds_every_code_once_and_lookup_finds_it():
    assert list(CODES) == EXPECTED
    for name, code in CODES.items():
        assert code.name == name and lookup(name) is code
    assert lookup("slhmc.validation:delayed_emt") is None and lookup("nope") is None


@pytest.mark.parametrize("name", EXPECTED)
def test_each_record_is_complete_and_consistent(name):
    code = CODES[name]
    module, _, attribute = code.factory.partition(":")
    assert module and attribute.isidentifier() and (code.module, code.attribute) == (module, attribute)
    assert code.options in typing.get_args(OptionCheck)
    assert code.energy in ("free_energy", "energy")
    assert code.install.strip()
    assert all(isinstance(exe, str) and exe for exe in code.executables)
    assert not code.command_env or code.executables, "a command from the environment replaces an executable"
    assert code.wait_option is None or code.keeps_process_alive, "only a kept process is waited on"
    assert not (code.stateless and code.keeps_process_alive)
    assert code.hartree is None or code.hartree in (ASE_HARTREE, CP2K_HARTREE)
    ok, detail = code_status(name)
    assert isinstance(ok, bool) and detail


@pytest.mark.parametrize("name", EXPECTED)
def test_each_installed_factory_imports_and_takes_what_its_record_says(name):
    if not installed(name):
        pytest.skip(f"{name} is not installed here")
    code = CODES[name]
    factory = resolve_factory(name)
    assert callable(factory)
    target = getattr(factory, "func", factory)
    props = getattr(target, "implemented_properties", None)
    if isinstance(props, list):  # the energy the record reads is one the calculator gives
        assert code.energy in props
        if code.energy == "energy":
            assert "free_energy" not in props
    accepted = accepted_options(name, factory)
    if code.options == "code":
        assert accepted is None  # the code judges its own keywords
        return
    assert accepted, f"{name}: option names should be known without running the code"
    assert set(code.defaults) <= set(accepted)
    if code.wait_option is not None:
        assert code.wait_option in accepted
    if code.options == "default_parameters":
        assert isinstance(target, type) and issubclass(target, Calculator)
        assert any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


def test_stateless_codes_are_analytic_ase_calculators_and_subclasses_count():
    from slhmc.validation import DelayedEMT

    assert [n for n, c in CODES.items() if c.stateless] == ["emt", "lj", "morse"]
    assert is_stateless(make_calculator("emt", {})) and is_stateless(DelayedEMT(delay_s=0.0))
    assert is_stateless(make_calculator("slhmc.validation:delayed_emt", {"delay_s": 0.0}))
    assert not is_stateless(make_calculator("socket", {"client": "true"}))


def test_hartree_paths_agree_with_the_live_constants():
    from slhmc.clients.references.socket_bridge import HARTREE_EV

    assert ASE_HARTREE.ev == units.Hartree == HARTREE_EV  # what ASE (and its IPIProtocol) multiplies by
    assert CODES["socket"].hartree == ASE_HARTREE and CODES["cp2k"].hartree == CP2K_HARTREE
    codata_2006 = units.create_units("2006")["Hartree"]
    assert CP2K_HARTREE.ev == pytest.approx(codata_2006, rel=1e-9)
    assert abs(CP2K_HARTREE.ev - ASE_HARTREE.ev) / ASE_HARTREE.ev == pytest.approx(7.9e-8, rel=0.05)


def test_reference_errors_are_ases_calculator_errors():
    classes = [obj for obj in vars(errors).values()
               if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == errors.__name__]
    assert len(classes) >= 5
    assert all(issubclass(cls, CalculatorError) for cls in classes)
    assert issubclass(CalculatorConfigError, CalculatorSetupError) and issubclass(CalculatorConfigError, ValueError)
    assert issubclass(OptionError, InputError)
    assert issubclass(errors.SCFNotConverged, SCFError)
    assert issubclass(errors.ReferenceCalculationError, CalculationFailed)
    assert issubclass(errors.ClientError, CalculationFailed)
    with pytest.raises(CalculatorSetupError, match="unknown"):
        make_calculator("nope", {})
    with pytest.raises(InputError, match=r"reference\.options\.sigam"):
        make_calculator("lj", {"sigam": 1.0})
    with pytest.raises(InputError, match="bind_reason"):
        make_calculator("socket", {"client": "true", "bind": "0.0.0.0"})


def test_the_config_check_needs_no_code_whose_options_it_cannot_know():
    check_config("espresso", ["anything"])  # not imported: pw.x's keywords are ASE's to judge
    check_config("slhmc.validation:delayed_emt", ["anything"])  # imported only with here=True
    with pytest.raises(OptionError, match=r"reference\.options\.delay .*delay_s"):
        check_config("slhmc.validation:delayed_emt", ["delay"], here=True)
    with pytest.raises(OptionError, match=r"reference\.options\.asap_cutof"):
        check_config("emt", ["asap_cutof"])
    with pytest.raises(CalculatorConfigError, match="is unknown"):
        check_config("emtt", [])


def test_reference_timeout_fills_the_wait_option_of_a_kept_process_only_where_unset():
    calc = make_calculator("socket", {"client": "true"}, timeout=7)
    own = make_calculator("socket", {"client": "true", "timeout": 2.0}, timeout=7)
    try:
        assert calc.timeout == 7.0 and own.timeout == 2.0
    finally:
        calc.close()
        own.close()
    make_calculator("emt", {}, timeout=7)  # no wait option: nothing added


def test_the_force_consistent_energy_is_read_where_there_is_one():
    atoms = bulk("Cu", cubic=True)
    atoms.calc = EMT()
    assert reference_energy(atoms) == atoms.get_potential_energy(force_consistent=True)
    frame = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    frame.calc = SinglePointCalculator(frame, energy=-1.5, forces=np.zeros((2, 3)))
    assert reference_energy(frame) == -1.5  # a labelled file without free_energy
    frame.calc = SinglePointCalculator(frame, energy=-1.5, free_energy=-1.6, forces=np.zeros((2, 3)))
    assert reference_energy(frame) == -1.6 and reference_energy(frame, "energy") == -1.5
