"""The structure's promises: any number of dims is a result or a ValueError,
the typed kernel contract rejects what it does not know, the layers import
only downwards, an unbuilt source tree says how to build it."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cattn
import cattn.reference as ref
from cattn import _kernels
from _oracle import assert_close

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(cattn.__file__).resolve().parent


# ---------------------------------------------------------------- any ndim
def _operand(nd, L, D, dtype=np.float64):
    return np.random.default_rng(nd).standard_normal((1,) * (nd - 2) + (L, D)).astype(dtype)


@pytest.mark.parametrize("nd", [2, 3, 8, 31, 32, 33, 34, 35, 48, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"return_lse": True}, {"causal": True}])
def test_attention_any_ndim_result_or_valueerror(nd, dtype, options):
    """Plain (fast path) and general calls: up to 32 dims a result equal to
    the oracle's, past that a ValueError naming the operand -- never a write
    past a fixed-size array."""
    q, k, v = _operand(nd, 17, 8, dtype), _operand(nd, 19, 8, dtype), _operand(nd, 19, 4, dtype)
    if nd > 32:
        with pytest.raises(ValueError, match="query has %d dims" % nd):
            cattn.attention(q, k, v, **options)
        return
    got = cattn.attention(q, k, v, **options)
    out = got[0] if isinstance(got, tuple) else got
    assert out.shape == q.shape[:-1] + (4,)
    want = ref.attention(q.reshape(17, 8), k.reshape(19, 8), v.reshape(19, 4),
                         causal=options.get("causal", False))
    assert_close(out.reshape(17, 4), want, dtype)


@pytest.mark.parametrize("name", ["key", "value", "mask", "bias", "q_segments"])
def test_every_operand_past_32_dims_is_named(name):
    q = k = v = _operand(3, 5, 4)
    args = {"query": q, "key": k, "value": v}
    extra = {}
    deep = (1,) * 31
    if name in ("key", "value"):
        args[name] = np.ones(deep + args[name].shape[-2:])
    elif name == "mask":
        extra["mask"] = np.ones(deep + (5, 5), bool)
    elif name == "bias":
        extra["bias"] = np.zeros(deep + (5, 5))
    else:
        extra["q_segments"] = np.zeros(deep + (5,), np.int64)
        extra["kv_segments"] = np.zeros(5, np.int64)
    with pytest.raises(ValueError, match=name):
        cattn.attention(args["query"], args["key"], args["value"], **extra)


@pytest.mark.parametrize("nd", [32, 33, 64])
def test_stage_functions_any_ndim(nd):
    x = _operand(nd, 3, 3)
    if nd > 32:
        for f, name in ((lambda: cattn.scores(x, x), "query"), (lambda: cattn.softmax(x), "x"),
                        (lambda: cattn.aggregate(x, x), "weights")):
            with pytest.raises(ValueError, match=f"{name} has {nd} dims"):
                f()
        return
    assert_close(cattn.scores(x, x).reshape(3, 3), ref.scores(x.reshape(3, 3), x.reshape(3, 3)),
                 np.float64)
    assert cattn.softmax(x).shape == x.shape
    assert cattn.aggregate(x, x).shape == x.shape


# ------------------------------------------------------- the typed contract
def _args(**over):
    q = np.zeros((1, 4, 4))
    op = _kernels.Operand(q, np.zeros(1, np.int64), 4, 1)
    kw = dict(n_batch=1, Lq=4, Lk=4, D=4, Dv=4, block_q=16, block_k=128, score_kind=0,
              scale=np.ones(1), q=op, k=op, v=op, out=op)
    kw.update(over)
    return kw


def test_kernel_args_misspelt_field_is_a_typeerror():
    _kernels.KernelArgs(**_args())
    with pytest.raises(TypeError):
        _kernels.KernelArgs(**_args(kv_lenghts=np.zeros(1, np.int64)))
    with pytest.raises(TypeError):
        _kernels.KernelArgs(**_args(scale=np.ones(1, np.float32)))     # wrong dtype
    with pytest.raises(TypeError):
        _kernels.KernelArgs(**_args(kv_len=np.zeros(2, np.int64)))     # wrong length
    with pytest.raises(TypeError):
        _kernels.KernelArgs(**_args(q=np.zeros((1, 4, 4))))            # not an Operand


def test_operand_offsets_are_checked():
    with pytest.raises(TypeError):
        _kernels.Operand(np.zeros((2, 2)), np.zeros(1, np.int32), 2, 1)
    bad = _kernels.Operand(np.zeros((1, 4, 4)), np.zeros(2, np.int64), 4, 1)
    with pytest.raises(ValueError):
        _kernels.KernelArgs(**_args(k=bad))


def test_kernel_args_run_and_match_the_public_call():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 20, 8)) for _ in range(3))
    out = np.empty((1, 20, 8))
    offs = np.zeros(1, np.int64)
    args = _kernels.KernelArgs(
        n_batch=1, Lq=20, Lk=20, D=8, Dv=8, block_q=16, block_k=128, score_kind=0,
        scale=np.full(1, 1 / np.sqrt(8)), q=_kernels.Operand(q, offs, 8, 1),
        k=_kernels.Operand(k, offs, 8, 1), v=_kernels.Operand(v, offs, 8, 1),
        out=_kernels.Operand(out, offs, 8, 1))
    _kernels.flash(args, _kernels.MODE_ATTENTION, 1)
    np.testing.assert_array_equal(out, cattn.attention(q, k, v, return_lse=True)[0])


# ------------------------------------------------------------- the layers
# each module may import only the modules listed (within cattn)
_ALLOWED = {
    "_options": set(),
    "_version": set(),
    "_bf16": set(),
    "_operands": {"_bf16"},
    "_quant": set(),
    "_validate": {"_bf16", "_operands", "_options", "_quant"},
    "_threads": {"_openmp_helpers", "_options"},
    "_plan": {"_bf16", "_kernels", "_threads", "_validate"},
    "_run": {"_bf16", "_kernels", "_operands"},
    "_stages": {"_kernels", "_operands", "_options", "_plan", "_run", "_threads", "_validate"},
    "reference": {"_options"},
    "_validate_paged": {"_bf16", "_options", "_quant"},
    "_paged": {"_bf16", "_kernels", "_quant", "_threads", "_validate_paged"},
}


def _cattn_imports(path):
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            mod = (node.module or "").split(".")[0]
            found |= {a.name for a in node.names} if not mod else {mod}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cattn"):
            parts = node.module.split(".")
            found.add(parts[1] if len(parts) > 1 else node.names[0].name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cattn."):
                    found.add(a.name.split(".")[1])
    return found


@pytest.mark.parametrize("module", sorted(_ALLOWED))
def test_layers_import_only_downwards(module):
    path = PKG / f"{module}.py"
    assert _cattn_imports(path) <= _ALLOWED[module], _cattn_imports(path)


def test_version_has_one_source():
    text = (ROOT / "pyproject.toml").read_text() if (ROOT / "pyproject.toml").exists() else ""
    if text:
        assert 'dynamic = ["version"]' in text and "cattn._version.__version__" in text
    init = (PKG / "__init__.py").read_text()
    assert "__version__ =" not in init


def test_score_names_have_one_source():
    from cattn._options import SCORES
    for path in PKG.rglob("*.py"):
        if path.name == "_options.py":
            continue
        assert '"cosine", "additive")' not in path.read_text(), path


# ------------------------------------------------- an unbuilt source tree
@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree")
def test_unbuilt_source_tree_says_how_to_build(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PKG, src / "cattn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.c"))
    # -S: no site-packages, so no editable install can serve the extension
    proc = subprocess.run([sys.executable, "-S", "-c", "import cattn"], cwd=src, capture_output=True,
                          text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode != 0
    assert "could not be imported" in proc.stderr
    assert "pip install" in proc.stderr
    assert "circular import" not in proc.stderr


def test_gqa_heads_that_do_not_divide_name_the_rule():
    q = np.zeros((4, 5, 8))
    kv = np.zeros((3, 5, 8))
    with pytest.raises(ValueError, match="grouped-query attention"):
        cattn.attention(q, kv, kv)


def test_planner_takes_the_kernel_tables_preferred_tile():
    """The tile comes from the kernel table where it names one (the bf16
    VDPBF16PS kernels: 128 x 256), else the planner's default; a call with
    few queries still gets smaller blocks, and every tile gives the same
    result as the reference."""
    from cattn import _plan
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for fmt in (_kernels.KV_NATIVE, _kernels.KV_BF16):
        pq, pk = _kernels.preferred_blocks(False, fmt)
        assert (pq, pk) == (0, 0) or (pq >= 16 and pk >= 16)
        bq, bk = _plan.tile_blocks(1, 4096, 1, np.float32, 64, False, (pq, pk))
        assert (bq, bk) == (pq or _plan.BLOCK_Q, pk or _plan.BLOCK_K)
        assert _plan.tile_blocks(1, 20, 1, np.float32, 64, False, (pq, pk))[0] <= 32
        # a short span (causal over <= SHORT_SPAN keys) takes its small
        # query blocks over the kernel's preferred ones: key tiles above the
        # diagonal are then skipped at that granularity
        span = _plan.SHORT_SPAN
        assert _plan.tile_blocks(1, 4096, 1, np.float32, 64, True, (pq, pk), span=span) == \
            (_plan.BLOCK_Q_SHORT_SPAN, pk or _plan.BLOCK_K)
        assert _plan.tile_blocks(1, 4096, 1, np.float32, 64, True, (pq, pk),
                                 span=span + 1)[0] == (pq or _plan.BLOCK_Q)
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 300, 64)).astype(ml_dtypes.bfloat16)
               for _ in range(3))
    out = cattn.attention(q, k, v, causal=True).astype(np.float64)
    e = ref.attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True)
    assert np.linalg.norm(out - e) <= 4e-3 * np.linalg.norm(e)
