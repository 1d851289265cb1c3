"""The package's layout as README.md draws it: imports run one way, and no module reaches
into another's privates. Read from the source with `ast`, so a new import cannot slip by."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tcpchatd")
SUBPACKAGES = ("wire", "store", "chat", "net", "control", "cluster", "service", "cli")
# what each subpackage may import of the others (the README's Layout section)
ALLOWED = {
    "wire": set(),
    "store": {"wire"},  # files that last, written atomically
    "chat": {"wire", "store"},
    "net": {"chat", "wire"},
    "control": {"chat", "store", "wire"},  # the history it shows (store/history.py)
    "cluster": {"chat", "wire"},  # implements the broker interface chat/ defines
    "service": {"net", "chat", "control", "cluster", "wire", "store", "cli"},  # docs.py reads the CLIs' parsers
    # the commands: never the daemon's settings (nor its log writer), net or chat
    "cli": {"wire", "control.admin", "control.specs", "control.paths", "control.errors"},
}


def modules():
    for sub in SUBPACKAGES:
        for name in sorted(os.listdir(os.path.join(PACKAGE, sub))):
            if name.endswith(".py"):
                path = os.path.join(PACKAGE, sub, name)
                with open(path) as fh:
                    yield sub, name[:-3], ast.parse(fh.read(), path)


def type_only(tree):
    """Imports under `if TYPE_CHECKING:`: annotations only, never run."""
    return {id(inner) for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for inner in ast.walk(node)}


def imported(sub, tree):
    """(subpackage.module or subpackage, names) of every tcpchatd import, made absolute."""
    skip = type_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in skip:
            if node.level == 0:
                if node.module and node.module.startswith("tcpchatd."):
                    yield node.module[len("tcpchatd."):], [a.name for a in node.names], node
                continue
            if node.level == 1:
                base = sub
            elif node.level == 2:
                base = ""
            else:
                raise AssertionError(f"import three levels up in {sub}")
            target = ".".join(p for p in (base, node.module) if p)
            if target == "":  # from .. import __version__
                continue
            if target in SUBPACKAGES:
                for alias in node.names:  # from . import x / from ..wire import x
                    yield f"{target}.{alias.name}", [alias.name], node
            else:
                yield target, [a.name for a in node.names], node


def all_modules():
    return [(sub, name, tree) for sub, name, tree in modules()]


def ids(value):
    return value if isinstance(value, str) else ""


@pytest.mark.parametrize("sub,name,tree", all_modules(), ids=ids)
def test_imports_run_one_way(sub, name, tree):
    for target, _, node in imported(sub, tree):
        other = target.split(".")[0]
        if other == sub:
            continue
        allowed = ALLOWED[sub]
        assert other in allowed or target in allowed, (
            f"tcpchatd/{sub}/{name}.py:{node.lineno} imports {target}: "
            f"{sub}/ may import only {sorted(allowed)}")


@pytest.mark.parametrize("sub,name,tree", all_modules(), ids=ids)
def test_no_module_imports_another_ones_privates(sub, name, tree):
    for target, names, node in imported(sub, tree):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"tcpchatd/{sub}/{name}.py:{node.lineno} imports {private} from {target}"


@pytest.mark.parametrize("name", ["specs", "paths"])
def test_what_tcpchatctl_shares_with_the_daemon_imports_nothing_of_it(name):
    tree = next(tree for sub, module, tree in modules() if (sub, module) == ("control", name))
    assert list(imported("control", tree)) == []


def test_the_readme_layout_lists_every_module():
    with open(os.path.join(os.path.dirname(PACKAGE), "README.md")) as fh:
        layout = fh.read().split("## Layout", 1)[1].split("## ", 1)[0]
    for sub, name, _ in modules():
        if name != "__init__":
            assert f"{name}.py" in layout, f"{sub}/{name}.py is missing from README's Layout"
    for sub in SUBPACKAGES:
        assert f"  {sub}/" in layout


# argparse has no public way to list a parser's options (docs.py reads them for the man
# pages); os._exit is the documented way out of a forked child
FOREIGN_PRIVATES = {"_actions", "_SubParsersAction", "_exit"}  # argparse, os._exit


@pytest.mark.parametrize("sub,name,tree", all_modules(), ids=ids)
def test_no_module_reaches_into_another_objects_privates(sub, name, tree):
    """`other._x` only on self or cls: what an object keeps private stays its own."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and node.attr not in FOREIGN_PRIVATES):
            owner = node.value
            assert isinstance(owner, ast.Name) and owner.id in ("self", "cls"), (
                f"tcpchatd/{sub}/{name}.py:{node.lineno} reads .{node.attr} of "
                f"{ast.unparse(owner)}")


def test_the_session_never_touches_a_socket():
    """The chat protocol runs on a transport (net/transport.py): socket and ssl are the
    transports' alone, and the loops know a session only as their Client protocol."""
    trees = {(sub, name): tree for sub, name, tree in modules()}
    for module in ("session", "engine"):
        names = {alias.name for node in ast.walk(trees[("net", module)])
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        assert not names & {"socket", "ssl"}, module
    engine_imports = [target for target, _, _ in imported("net", trees[("net", "engine")])]
    assert "net.session" not in engine_imports
