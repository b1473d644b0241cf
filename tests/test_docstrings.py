"""Every public function and class has a complete numpydoc docstring.

For every callable in the ``__all__`` of the packages in :data:`PACKAGES` (and the
public methods and properties its classes define themselves, or inherit from a
private base class of tuckerflow such as ``_TuckerConvNd``, whose docstrings are read
through the public classes; a method shared by several public classes is checked
once, under the first):

* a non-empty summary, and a docstring that numpydoc parses without a warning;
* a ``Parameters`` entry for every parameter of the signature and none that the
  signature lacks (``self``/``cls`` aside; ``*args``/``**kwargs`` may be written with
  or without their stars; a class may list its constructor's parameters under
  ``Attributes`` instead, as dataclasses do, and list attributes there that are no
  parameters). A class's signature is that of the
  nearest constructor tuckerflow defines (``TuckerConv2d`` documents
  ``_TuckerConvNd.__init__``); a class whose constructor is torch's
  (``TuckerLayer``: ``nn.Module.__init__``) has no parameters of its own;
* a ``Returns`` (or ``Yields``) section unless the return annotation says ``None``
  (a context manager annotated ``Iterator[None]`` yields nothing either);
* a ``Raises`` section when the source raises: a ``raise`` statement of its own, a
  call of a ``check_*`` validator (``tuckerflow._checks`` and the integrators' input
  checks all raise), or a call of a private helper that raises by these rules
  (``_name(...)`` or ``self._name(...)``, followed transitively);
* a ``References`` section for the algorithm entry points in :data:`ALGORITHMS`.

Overrides of torch methods (``forward``, ``extra_repr``, ``state_dict``, ``step``,
...) that a class defines are checked like any other method: ``forward`` is where a
layer's input and output shapes are stated, ``TDLRT.step`` what it does beyond
torch's contract. Methods a class only inherits from torch are torch's to document
and not checked.

One test per name and rule, so a failure names the function and what is missing.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
import warnings
from typing import Any

import pytest
from numpydoc.docscrape import ClassDoc, FunctionDoc, NumpyDocString

PACKAGES = [
    "tuckerflow",
    "tuckerflow.integrators",
    "tuckerflow.nn",
    "tuckerflow.nn.models",
]

# the algorithm entry points: their docstrings cite the paper they implement
ALGORITHMS = {
    "tdlrt_step",
    "bug_step",
    "parallel_bug_step",
    "rgd_step",
    "vanilla_step",
    "hosvd",
    "truncate",
    "project",
    "retract",
    "Adam",
    "Momentum",
    "integrate",
    # tuckerflow.nn: the optimizer, the conversions and the layers (whose
    # from_dense is the HOSVD initialisation)
    "TDLRT",
    "tuckerize",
    "add_tucker_adapters",
    "from_dense",
    "TuckerLayer",
    "TuckerLinear",
    "TuckerConv1d",
    "TuckerConv2d",
    "TuckerConv3d",
    "TuckerConvTranspose1d",
    "TuckerConvTranspose2d",
    "TuckerConvTranspose3d",
    "TuckerMultiheadAttention",
}

CHECK_CALL = re.compile(r"^_?check_\w+$")
NOTHING_YIELDED = re.compile(r"^(typing\.)?(Iterator|Generator|Iterable)\[None\b")


def _is_private_base(cls: type) -> bool:
    """A tuckerflow class not exported under its name (``_TuckerConvNd``)."""
    return cls.__module__.startswith("tuckerflow") and cls.__name__.startswith("_")


def _defining_classes(cls: type) -> list[type]:
    """``cls`` and the private tuckerflow bases it inherits from directly (up to the
    first public or foreign base: that one's methods are checked on it, or are
    torch's)."""
    classes = [cls]
    for base in cls.__mro__[1:]:
        if not _is_private_base(base):
            break
        classes.append(base)
    return classes


def _public_members(cls: type) -> list[tuple[str, Any]]:
    """Methods and properties ``cls`` defines itself or takes from a private base
    (inherited public ones are their class's, torch's are torch's)."""
    members, names = [], set()
    for owner in _defining_classes(cls):
        for name, raw in vars(owner).items():
            if name.startswith("_") or name in names:
                continue
            names.add(name)  # the most derived definition wins
            if isinstance(raw, (classmethod, staticmethod)):
                members.append((name, getattr(cls, name)))
            elif isinstance(raw, property) or inspect.isfunction(raw):
                members.append((name, raw))
    return members


def _identity(obj: Any) -> int:
    """The same id for a function however it is reached (bound classmethods are new
    objects on every access)."""
    return id(getattr(obj, "__func__", obj))


def _collect() -> list[tuple[str, Any]]:
    seen: set[int] = set()
    found = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            found.append((f"{package}.{name}", obj))
            if inspect.isclass(obj):
                for member, value in _public_members(obj):
                    if _identity(value) in seen:  # shared with a class seen before
                        continue
                    seen.add(_identity(value))
                    found.append((f"{package}.{name}.{member}", value))
    return found


TARGETS = _collect()
IDS = [name for name, _ in TARGETS]


def _parse(obj: Any) -> NumpyDocString:
    if inspect.isclass(obj):
        return ClassDoc(obj, config={"show_class_members": False})
    if isinstance(obj, property):
        return NumpyDocString(inspect.getdoc(obj) or "")
    return FunctionDoc(obj)


def _doc(obj: Any) -> NumpyDocString:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _parse(obj)


def _constructor(cls: type) -> Any:
    """The nearest ``__init__`` in the MRO of ``cls`` if tuckerflow defines it (None
    for one inherited from torch or ``object``)."""
    for owner in cls.__mro__:
        if "__init__" in vars(owner):
            init = vars(owner)["__init__"]
            ours = owner.__module__.startswith("tuckerflow")
            return init if ours and inspect.isfunction(init) else None
    return None


def _function(obj: Any) -> Any:
    """The plain function behind ``obj`` (for a class its constructor, see
    :func:`_constructor`; may be a generated dataclass ``__init__``)."""
    if isinstance(obj, property):
        return obj.fget
    if inspect.isclass(obj):
        return _constructor(obj)
    return inspect.unwrap(getattr(obj, "__func__", obj))


def _source_tree(func: Any) -> ast.AST | None:
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):  # generated code (a dataclass __init__)
        return None
    return ast.parse(source)


def _is_stub(tree: ast.AST) -> bool:
    """An abstract method: only (a docstring and) ``raise NotImplementedError``."""
    body = tree.body[0].body
    body = [s for s in body if not (isinstance(s, ast.Expr) and _is_str(s.value))]
    if len(body) != 1 or not isinstance(body[0], ast.Raise):
        return False
    raised = body[0].exc
    raised = raised.func if isinstance(raised, ast.Call) else raised
    return isinstance(raised, ast.Name) and raised.id == "NotImplementedError"


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _private_callee(func: Any, call: ast.Call) -> Any:
    """The tuckerflow function run by a call of a private helper in ``func``:
    ``_name(...)`` (a module function) or ``self._name(...)``/``cls._name(...)`` (a
    method of the class ``func`` is defined in, or of its bases); None otherwise."""
    callee, scope = call.func, getattr(func, "__globals__", {})
    if isinstance(callee, ast.Name) and callee.id.startswith("_"):
        target = scope.get(callee.id)
    elif (
        isinstance(callee, ast.Attribute)
        and isinstance(callee.value, ast.Name)
        and callee.value.id in ("self", "cls")
        and callee.attr.startswith("_")
        and not callee.attr.startswith("__")
    ):
        owner = scope.get(func.__qualname__.split(".")[0])
        target = getattr(owner, callee.attr, None) if inspect.isclass(owner) else None
        target = getattr(target, "__func__", target)
    else:
        return None
    ours = inspect.isfunction(target) and target.__module__.startswith("tuckerflow")
    return target if ours else None


def _function_raises(func: Any, seen: set[int]) -> bool:
    if func is None or id(func) in seen:
        return False
    seen.add(id(func))
    tree = _source_tree(func)
    if tree is None or _is_stub(tree):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise):
            return True
        if isinstance(node, ast.Call):
            callee = node.func
            name = getattr(callee, "id", None) or getattr(callee, "attr", None)
            if name and CHECK_CALL.match(name):
                return True
            if _function_raises(_private_callee(func, node), seen):
                return True
    return False


def _raises(obj: Any) -> bool:
    """A ``raise`` or ``check_*`` call in the source, or in a private helper it calls
    (followed transitively: ``TuckerLinear`` raises through ``_setup_tucker``)."""
    return _function_raises(_function(obj), set())


def _signature_names(obj: Any) -> set[str]:
    if isinstance(obj, property):
        return set()
    if inspect.isclass(obj) and _constructor(obj) is None:
        return set()  # torch's constructor (TuckerLayer): nothing of its own
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return set()
    return {name for name in signature.parameters if name not in ("self", "cls")}


def _documented(entries: list) -> set[str]:
    names = set()
    for entry in entries:
        for name in entry.name.split(","):
            name = name.strip().lstrip("*")
            if name:
                names.add(name)
    return names


def _returns_something(obj: Any) -> bool:
    if inspect.isclass(obj) or isinstance(obj, property):
        return False
    annotation = inspect.signature(obj).return_annotation
    if annotation is inspect.Signature.empty:
        func = _function(obj)
        tree = _source_tree(func)
        return tree is not None and any(
            isinstance(node, ast.Return)
            and node.value is not None
            and not (isinstance(node.value, ast.Constant) and node.value.value is None)
            for node in ast.walk(tree.body[0])
        )
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return annotation is not None and text != "None" and not NOTHING_YIELDED.match(text)


def test_targets_found():
    names = {name.rsplit(".", 1)[-1] for name in IDS}
    assert ALGORITHMS <= names, ALGORITHMS - names


@pytest.mark.parametrize(("name", "obj"), TARGETS, ids=IDS)
def test_summary(name, obj):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doc = _parse(obj)
    assert " ".join(doc["Summary"]).strip(), f"{name}: no summary line"
    problems = [str(w.message) for w in caught]
    assert not problems, f"{name}: numpydoc warns: {problems}"


@pytest.mark.parametrize(("name", "obj"), TARGETS, ids=IDS)
def test_parameters(name, obj):
    doc = _doc(obj)
    documented = _documented(doc["Parameters"])
    expected = _signature_names(obj)
    extra = documented - expected
    if inspect.isclass(obj):  # Attributes may cover parameters and list more
        documented |= _documented(doc["Attributes"])
    missing = expected - documented
    assert not missing and not extra, (
        f"{name}: Parameters lacks {sorted(missing)}, lists unknown {sorted(extra)}"
    )


@pytest.mark.parametrize(("name", "obj"), TARGETS, ids=IDS)
def test_returns(name, obj):
    if not _returns_something(obj):
        pytest.skip("returns None")
    doc = _doc(obj)
    assert doc["Returns"] or doc["Yields"], f"{name}: no Returns section"


@pytest.mark.parametrize(("name", "obj"), TARGETS, ids=IDS)
def test_raises(name, obj):
    if not _raises(obj):
        pytest.skip("raises nothing of its own")
    assert _doc(obj)["Raises"], f"{name}: raises, but has no Raises section"


@pytest.mark.parametrize(
    ("name", "obj"),
    [(n, o) for n, o in TARGETS if n.rsplit(".", 1)[-1] in ALGORITHMS],
    ids=[n for n in IDS if n.rsplit(".", 1)[-1] in ALGORITHMS],
)
def test_references(name, obj):
    assert _doc(obj)["References"], f"{name}: no References section"
