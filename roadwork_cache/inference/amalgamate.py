"""detector.py of an exported model, generated from the package's own modules.

The exported detector runs in the subnet's environment (torch, timm, safetensors, numpy,
pillow; no roadwork_cache, transformers or scikit-learn) and must compute what `roadwork
predict` computes. A hand-kept second copy of the head would drift from the one that
trained, so detector.py *is* the package's modules: the source of each part below is copied
in order, its `from roadwork_cache...` imports dropped (every name they bring must be
defined by an earlier part), its other imports hoisted to the top, and a short epilogue
defines `RoadworkDetector`. A part either takes its whole module or named definitions of
it (and the module-level names those use), so a module that also holds code the detector
must not import (albumentations recipes, scikit-learn fitting) stays where it is.

Generation refuses, naming the culprit, any import outside the standard library and
`STANDALONE_IMPORTS`, a name defined by two parts, and a dropped import no earlier part
satisfies: a change in the package that would break the detector fails at export time
(and in tests/test_export.py), never on a miner's box.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from roadwork_cache.runtime.version import __version__

PACKAGE = "roadwork_cache"
STANDALONE_IMPORTS = ("torch", "timm", "safetensors", "numpy", "PIL")


@dataclass(frozen=True)
class Part:
    module: str  # e.g. roadwork_cache.heads.head
    names: tuple[str, ...] = ()  # empty: the whole module


PARTS: tuple[Part, ...] = (
    Part("roadwork_cache.runtime.files"),
    Part("roadwork_cache.readers.images"),
    Part("roadwork_cache.views.geometry"),
    Part("roadwork_cache.views.variants", ("tta_image",)),
    Part("roadwork_cache.backbone.presets", ("NORMALISATIONS", "check_normalisation")),
    Part("roadwork_cache.heads.config"),
    Part("roadwork_cache.heads.layers"),
    Part("roadwork_cache.heads.attention"),
    Part("roadwork_cache.heads.gafm"),
    Part("roadwork_cache.heads.pruning"),
    Part("roadwork_cache.heads.metadata"),
    Part("roadwork_cache.heads.coverage"),
    Part("roadwork_cache.heads.head"),
    Part("roadwork_cache.heads.stacked"),
    Part("roadwork_cache.heads.probe"),
    Part("roadwork_cache.heads.combine"),
    Part(
        "roadwork_cache.inference.foods",
        ("foods_weights", "uniform_weights", "weighted_probability"),
    ),
    Part("roadwork_cache.inference.export_format"),
    Part("roadwork_cache.inference.standalone"),
)

PRELUDE = '''
class UserError(ValueError):
    """A bad model folder or argument, in one sentence (a ValueError a miner can catch)."""
'''

EPILOGUE = '''
class RoadworkDetector(StandaloneDetector):
    """P(roadwork) of one image, with 0.5 as the cut: `RoadworkDetector()(PIL.Image) -> float`.

    model_dir: the exported folder (default: the one holding this file). device: "cuda",
    "cuda:N", "cpu" or None (CUDA when there is one). tta: None keeps the export's default,
    False scores the clean image only (fastest), True adds the TTA variants; max_variants
    keeps the first N of them. dtype: None picks bf16 on GPUs of compute capability >= 8,
    fp16 on older ones, fp32 on the CPU. verify: check the weights' sha256 first.
    """

    def __init__(
        self,
        model_dir=None,
        device=None,
        tta=None,
        max_variants=None,
        dtype=None,
        verify=True,
    ):
        folder = Path(__file__).resolve().parent if model_dir is None else model_dir
        super().__init__(folder, device, tta, max_variants, dtype, verify)


if __name__ == "__main__":
    import sys

    detector = RoadworkDetector()
    print(detector.describe())
    for name in sys.argv[1:]:
        print(name, detector(Image.open(name)))
'''


class AmalgamationError(RuntimeError):
    """The package's modules cannot become a standalone detector.py (a bug, not bad input)."""


def module_path(module: str) -> Path:
    root = Path(__file__).resolve().parents[1]  # the roadwork_cache folder
    return root.parent.joinpath(*module.split(".")).with_suffix(".py")


def allowed_import(name: str) -> bool:
    top = name.split(".")[0]
    return top in sys.stdlib_module_names or top in STANDALONE_IMPORTS


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _used_names(nodes: list[ast.stmt]) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bindings(node: ast.Import | ast.ImportFrom) -> list[tuple[str, str]]:
    """(bound name, a one-name import statement) for every alias of an import."""
    out = []
    for alias in node.names:
        if isinstance(node, ast.Import):
            bound = alias.asname or alias.name.split(".")[0]
            text = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
        else:
            bound = alias.asname or alias.name
            text = f"from {node.module} import {alias.name}" + (
                f" as {alias.asname}" if alias.asname else ""
            )
        out.append((bound, text))
    return out


def _source(lines: list[str], node: ast.stmt) -> str:
    """The node's lines, with its decorators and the comment lines right above it."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while start > 1 and lines[start - 2].lstrip().startswith("#"):
        start -= 1
    return "\n".join(lines[start - 1 : node.end_lineno])


@dataclass
class _Chunk:
    part: Part
    text: str


class _Builder:
    def __init__(self) -> None:
        self.defined: dict[str, str] = {"UserError": "the prelude"}
        self.imports: dict[str, str] = {}  # statement -> bound name
        self.chunks: list[_Chunk] = []

    def add(self, part: Part) -> None:
        path = module_path(part.module)
        text = path.read_text()
        lines = text.splitlines()
        body = ast.parse(text).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the module docstring
        imports = [n for n in body if isinstance(n, ast.Import | ast.ImportFrom)]
        code = [n for n in body if not isinstance(n, ast.Import | ast.ImportFrom)]
        if part.names:
            code = self._closure(part, code)
        used = _used_names(code)
        for node in imports:
            self._take_import(part, node, used)
        for node in code:
            self._check_inner_imports(part, node)
            for name in _defined_names(node):
                if name in self.defined:
                    raise AmalgamationError(
                        f"{name} is defined by both {self.defined[name]} and {part.module}"
                    )
                self.defined[name] = part.module
        clash = sorted(set(self.defined) & set(self.imports.values()))
        if clash:
            raise AmalgamationError(f"{clash[0]} is both imported and defined ({part.module})")
        self.chunks.append(_Chunk(part, "\n\n\n".join(_source(lines, n) for n in code)))

    def _closure(self, part: Part, code: list[ast.stmt]) -> list[ast.stmt]:
        """The named definitions and every module-level definition they use, in order."""
        by_name = {name: node for node in code for name in _defined_names(node)}
        missing = [n for n in part.names if n not in by_name]
        if missing:
            raise AmalgamationError(f"{part.module} defines no {', '.join(missing)}")
        wanted, todo = set(), list(part.names)
        while todo:
            name = todo.pop()
            if name in wanted:
                continue
            wanted.add(name)
            todo.extend(n for n in _used_names([by_name[name]]) if n in by_name)
        return [node for node in code if set(_defined_names(node)) & wanted]

    def _take_import(self, part: Part, node: ast.Import | ast.ImportFrom, used: set[str]) -> None:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            return  # the file starts with its own
        ours = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == PACKAGE for a in node.names
        ):
            raise AmalgamationError(f"{part.module}: `import {PACKAGE}...` cannot be amalgamated")
        for bound, statement in _bindings(node):
            if part.names and bound not in used:
                continue
            if ours:
                if bound not in self.defined:
                    raise AmalgamationError(
                        f"{part.module} imports {bound} from {node.module}, which no earlier "
                        "part defines"
                    )
                continue
            module = node.module if isinstance(node, ast.ImportFrom) else statement.split()[1]
            if not allowed_import(module or ""):
                raise AmalgamationError(
                    f"{part.module} imports {module}, which the standalone detector may not"
                )
            other = next((s for s, b in self.imports.items() if b == bound), statement)
            plain = statement.startswith("import ") and " as " not in statement
            if other != statement and not plain:
                raise AmalgamationError(f"{bound} means both `{other}` and `{statement}`")
            self.imports[statement] = bound

    def _check_inner_imports(self, part: Part, node: ast.stmt) -> None:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                names = [a.name for a in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                names = [inner.module or ""]
            else:
                continue
            bad = [n for n in names if not allowed_import(n) or n.split(".")[0] == PACKAGE]
            if bad:
                raise AmalgamationError(
                    f"{part.module} imports {bad[0]} inside a definition the detector needs"
                )

    def render(self) -> str:
        def key(statement: str) -> tuple[bool, bool, str, str]:  # stdlib, then `import` first
            module = statement.split()[1]
            third_party = module.split(".")[0] not in sys.stdlib_module_names
            return (third_party, statement.startswith("from "), module, statement)

        header = HEADER.format(
            version=__version__, parts="\n".join(_describe(c.part) for c in self.chunks)
        )
        out = [header, "from __future__ import annotations", ""]
        ordered = sorted(self.imports, key=key)
        stdlib = [s for s in ordered if not key(s)[0]]
        out += [*stdlib, "", *ordered[len(stdlib) :]]
        out += ["", "", PRELUDE.strip("\n")]
        for chunk in self.chunks:
            out += ["", "", f"# ---- {_describe(chunk.part).strip()} " + "-" * 8, "", chunk.text]
        out += ["", "", EPILOGUE.strip("\n"), ""]
        return "\n".join(out)


HEADER = '''"""RoadworkDetector of a model exported by roadwork-cache {version}.

    from detector import RoadworkDetector
    detector = RoadworkDetector()             # this folder; CUDA when there is one
    p = detector(PIL.Image.open("x.jpg"))     # a float in [0, 1]; 0.5 is the cut

Needs only torch, timm (>= 1.0.22: DINOv3), safetensors, numpy and pillow. Generated by
`roadwork export` from these modules of roadwork-cache, unchanged but for their imports:
{parts}
Do not edit: `roadwork export --check` compares this file with the sha256 in config.json.
"""'''


def _describe(part: Part) -> str:
    names = f" ({', '.join(part.names)})" if part.names else ""
    return f"    {part.module}{names}"


def detector_source(parts: tuple[Part, ...] = PARTS) -> str:
    """The text of an exported folder's detector.py."""
    builder = _Builder()
    for part in parts:
        builder.add(part)
    return builder.render()
