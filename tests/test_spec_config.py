import dataclasses

import pytest

from codeclens.config import build, field_docs
from codeclens.errors import CodeclensError, SpecError
from codeclens.spec import parse_spec
from codeclens.store.reprs import Repr, parse_reprs


def test_spec_grammar():
    s = parse_spec("encodec:24khz@6kbps?random_init&seed=3")
    assert (s.kind, s.target) == ("encodec", "24khz@6kbps")
    assert s.get("random_init", False, bool) is True
    assert s.get("seed", 0, int) == 3
    assert str(parse_spec("python:pkg.mod:Cls?size=small")) == "python:pkg.mod:Cls?size=small"
    assert parse_spec("python:pkg.mod:Cls").target == "pkg.mod:Cls"
    with pytest.raises(SpecError, match="known: checkpoint"):
        parse_spec("melrvq?bogus=1").check_keys(["checkpoint"])
    with pytest.raises(SpecError, match="twice"):
        parse_spec("melrvq?a=1&a=2")
    with pytest.raises(SpecError, match="not a valid int"):
        parse_spec("x?n=abc").get("n", 0, int)
    # str() parses back to the same spec, even for paths holding the grammar's separators.
    odd = parse_spec("melrvq:a%3Fb?checkpoint=/runs/a%26b%2525&seed=1")
    assert odd.target == "a?b" and odd.get("checkpoint") == "/runs/a&b%25"
    assert parse_spec(str(odd)) == odd
    assert str(parse_spec("encodec:24khz@6kbps?random_init&seed=3")) == "encodec:24khz@6kbps?random_init=1&seed=3"


def test_bare_folder_is_folder_corpus(tmp_path):
    assert parse_spec(str(tmp_path)).kind == "folder"


def test_reprs():
    r = parse_reprs("layer:1-3,cumulative:2,latent,mean(cumulative:8)", n_layers=8)
    assert [x.name for x in r] == ["layer:1", "layer:2", "layer:3", "cumulative:2", "latent", "mean(cumulative:8)"]
    assert r[0].is_lookup and not r[3].is_lookup
    assert parse_reprs("layer:*", n_layers=2) == [Repr("layer", 1), Repr("layer", 2)]
    with pytest.raises(CodeclensError, match="has 8"):
        parse_reprs("layer:9", n_layers=8)
    with pytest.raises(CodeclensError, match="bad representation"):
        parse_reprs("vector:1")


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n: int = 3
    """How many."""
    names: tuple[str, ...] = ("a",)
    """Which ones."""
    layers: tuple[int, ...] = ()
    """Layer numbers."""

    def __post_init__(self):
        if self.n < 0:
            raise ValueError("n must be >= 0")


def test_config_docs_and_validation():
    assert field_docs(_Cfg) == {"n": "How many.", "names": "Which ones.", "layers": "Layer numbers."}
    assert build(_Cfg, {"names": "x,y"}).names == ("x", "y")
    # A comma string (TOML) gives the same typed tuple as the CLI; lists pass through.
    assert build(_Cfg, {"layers": "1, 3"}).layers == (1, 3)
    assert build(_Cfg, {"layers": [2, 4]}).layers == (2, 4)
    with pytest.raises(CodeclensError, match="layers"):
        build(_Cfg, {"layers": "1,x"})
    with pytest.raises(CodeclensError, match="unknown option"):
        build(_Cfg, {"m": 1})
    with pytest.raises(CodeclensError, match="n must be"):
        build(_Cfg, {"n": -1})


def test_device_errors_are_one_line():
    from codeclens.util.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(CodeclensError, match="unknown device 'bogus'"):
        resolve_device("bogus")
