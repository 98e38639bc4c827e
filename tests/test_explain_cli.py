"""Tests of cattn.explain, the newspaper demo and the ``cattn`` command line."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import cattn
from cattn import reference
from cattn._cli import main
from cattn._demo import SCORES, run_demo
from cattn.explain import Comparison, Explanation, explain, newspaper

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture
def qkv():
    rng = np.random.default_rng(1234)
    return (rng.standard_normal((3, 5)), rng.standard_normal((7, 5)),
            rng.standard_normal((7, 4)))


def _reference(q, k, v, **kw):
    return reference.attention(q, k, v, return_weights=True, **kw)


# --------------------------------------------------------------------- numbers
@pytest.mark.parametrize("score", SCORES)
def test_matches_reference(qkv, score):
    q, k, v = qkv
    e = explain(q, k, v, score=score)
    assert isinstance(e, Explanation)
    out, w = _reference(q, k, v, score=score)
    np.testing.assert_allclose(e.weights.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.scores, reference.scores(q, k, score=score), **TIGHT)
    np.testing.assert_allclose(e.weights, w, **TIGHT)
    np.testing.assert_allclose(e.output, out, **TIGHT)
    assert e.output.dtype == np.float64
    assert e.max_abs_diff is not None and e.max_abs_diff < 1e-12
    assert e.score == score and e.labels == [f"k{i}" for i in range(1, 8)]


def test_single_query_and_scalar_values():
    q = np.array([1.0, 0.5])
    k = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = np.array([10.0, 20.0, 30.0])
    e = explain(q, k, v, score="dot")
    assert e.scores.shape == (3,) and e.weights.shape == (3,) and e.output.shape == ()
    np.testing.assert_allclose(e.scores, [1.0, 0.5, 1.5], **TIGHT)
    out, w = _reference(q[None], k, v[:, None], score="dot")
    np.testing.assert_allclose(e.weights, w[0], **TIGHT)
    np.testing.assert_allclose(e.output, out[0, 0], **TIGHT)
    assert e.most_attended == "k3"

    e2 = explain(q, k, np.stack([v, -v], axis=1), score="dot")
    assert e2.output.shape == (2,)
    np.testing.assert_allclose(e2.output, [out[0, 0], -out[0, 0]], **TIGHT)


@pytest.mark.parametrize("opts", [
    {"scale": 0.25},
    {"score": "additive", "additive_weight": [0.5, -1.0, 2.0, 0.0, 1.0]},
    {"causal": True},
    {"window": (1, 0)},
    {"mask": np.array([True, False, True, True, False, True, True])},
    {"bias": np.linspace(-1.0, 1.0, 7)},
])
def test_options_match_reference(qkv, opts):
    q, k, v = qkv
    e = explain(q, k, v, **opts)
    out, w = _reference(q, k, v, **opts)
    np.testing.assert_allclose(e.weights, w, **TIGHT)
    np.testing.assert_allclose(e.output, out, **TIGHT)
    np.testing.assert_allclose(e.weights.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    masked = np.isneginf(e.masked_scores)
    assert np.all(e.weights[masked] == 0.0)
    if "mask" in opts or "causal" in opts or "window" in opts:
        assert masked.any()
        assert "masked" in str(e)


def test_fully_masked_row(qkv):
    q, k, v = qkv
    mask = np.ones((3, 7), dtype=bool)
    mask[1] = False
    e = explain(q, k, v, mask=mask)
    assert np.all(e.weights[1] == 0.0) and np.all(e.output[1] == 0.0)
    np.testing.assert_allclose(e.output, _reference(q, k, v, mask=mask)[0], **TIGHT)
    assert e.most_attended[1] is None
    assert "every key is masked" in str(e)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("how", ["mask", "causal"])
def test_non_finite_masked_out_values(bad, how):
    """Masked-out values holding NaN or inf made explain raise RuntimeError
    ("the three stages ... disagree"): 0 * NaN poisoned stage 3, though
    attention never reads what is masked out."""
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((3, 4)), rng.standard_normal((4, 4))
    v = rng.standard_normal((4, 2))
    v[3, 1] = bad                      # key 3: masked out for queries 0 and 1
    opts = ({"mask": np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool)}
            if how == "mask" else {"causal": True, "window": (None, -1)})
    e = explain(q, k, v, **opts)
    want = reference.attention(q, k, v, **opts)
    got = e.output
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.isfinite(got[:2]).all()
    str(e)                                # renders


def test_float32_stays_float32(qkv):
    q, k, v = (x.astype(np.float32) for x in qkv)
    e = explain(q, k, v, score="cosine")
    assert e.weights.dtype == np.float32 and e.output.dtype == np.float32
    np.testing.assert_allclose(e.output, _reference(q, k, v, score="cosine")[0],
                               rtol=1e-4, atol=1e-5)


def test_check_catches_a_disagreeing_fused_kernel(qkv, monkeypatch):
    q, k, v = qkv
    real = cattn.attention
    monkeypatch.setattr(cattn, "attention", lambda *a, **kw: real(*a, **kw) + 1e-3)
    with pytest.raises(RuntimeError, match="disagree"):
        explain(q, k, v)
    e = explain(q, k, v, check=False)           # the staged numbers are still right
    assert e.max_abs_diff is None
    np.testing.assert_allclose(e.output, _reference(q, k, v)[0], **TIGHT)


@pytest.mark.parametrize("bad, exc", [
    (dict(score="euclid"), ValueError),
    (dict(score=[]), ValueError),
    (dict(lang="fr"), ValueError),
    (dict(labels=["a", "b"]), ValueError),
    (dict(value_labels=["x"]), ValueError),
    (dict(softcap=3.0), TypeError),
    (dict(mask=np.ones(7)), TypeError),
])
def test_bad_arguments(qkv, bad, exc):
    q, k, v = qkv
    with pytest.raises(exc):
        explain(q, k, v, **bad)


def test_bad_shapes(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError):
        explain(q[:, :4], k, v)                    # D differs
    with pytest.raises(ValueError):
        explain(q, k, v[:5])                       # Lk differs
    with pytest.raises(ValueError):
        explain(q[None], k, v)                     # 3-D query


# ------------------------------------------------------------------------ text
def test_text_shows_three_stages_and_labels():
    d = newspaper("en")
    e = explain(d["query"], d["keys"], d["values"], labels=d["labels"],
                value_labels=d["value_labels"], score="scaled_dot")
    text = str(e)
    assert text == repr(e)
    pos = [text.index(f"Stage {i}") for i in (1, 2, 3)]
    assert pos == sorted(pos)
    for word in ("cattn.scores", "cattn.softmax", "cattn.aggregate", "Q·k_i / √D",
                 "exp(s_i)", "V′", "\u2588", "share", *d["labels"], *d["value_labels"]):
        assert word in text, word
    # the bar and the marker sit on the most attended key's row
    top_line = next(line for line in text.splitlines() if "most attention" in line)
    assert top_line.split()[0] == e.most_attended == "technology"
    # every weight is printed
    for w in e.weights:
        assert f"{w:.3f}" in text


def test_text_chinese():
    d = newspaper("zh")
    e = explain(d["query"], d["keys"], d["values"], labels=d["labels"], lang="zh")
    text = str(e)
    for word in ("阶段一", "阶段二", "阶段三", "查询", "键", "值", "softmax",
                 "体育", "科技", "股票", "健康", "最受关注"):
        assert word in text, word
    assert "Stage" not in text
    assert "Stage 1" in e.to_text(lang="en")        # re-render in another language


@pytest.mark.parametrize("score, formula", [
    ("dot", "Q·k_i = Σ_d"), ("scaled_dot", "/ √D"), ("cosine", "‖Q‖·‖k_i‖"),
    ("additive", "w_d·tanh(Q_d + k_id)"),
])
def test_formula_named(qkv, score, formula):
    q, k, v = qkv
    assert formula in str(explain(q, k, v, score=score))


def test_long_inputs_are_truncated():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((9, 3)), rng.standard_normal((40, 3)), rng.standard_normal((40, 2))
    text = explain(q, k, v).to_text(max_keys=5, max_queries=2)
    assert "35 more keys" in text and "7 more queries" in text
    assert "k6" not in text


# ------------------------------------------------------------------ comparison
def test_comparison():
    d = newspaper("en")
    c = explain(d["query"], d["keys"], d["values"], labels=d["labels"],
                score=["dot", "cosine", "additive"], additive_weight=d["additive_weight"])
    assert isinstance(c, Comparison) and len(c) == 3
    assert c.score == ("dot", "cosine", "additive")
    for name in c.score:
        single = explain(d["query"], d["keys"], d["values"], labels=d["labels"], score=name,
                         additive_weight=d["additive_weight"])
        np.testing.assert_allclose(c[name].weights, single.weights, **TIGHT)
        np.testing.assert_allclose(c.weights[name].sum(), 1.0, rtol=0, atol=1e-12)
        kw = {"additive_weight": d["additive_weight"]} if name == "additive" else {}
        out, _ = _reference(d["query"][None], d["keys"], d["values"], score=name, **kw)
        np.testing.assert_allclose(c.output[name], out[0], **TIGHT)
    assert c.most_attended == {"dot": "technology", "cosine": "technology",
                               "additive": "technology"}
    text = str(c)
    for word in ("Stage 1", "Stage 2", "Stage 3", "dot", "cosine", "additive",
                 "tanh", "‖Q‖", "technology (", *d["labels"]):
        assert word in text, word
    # stage 1: one row per key with one score column per similarity
    row = next(line for line in text.splitlines() if line.strip().startswith("stocks"))
    assert f"{c.scores['dot'][2]:.3f}" in row and f"{c.scores['cosine'][2]:.3f}" in row


def test_comparison_without_duplicates(qkv):
    q, k, v = qkv
    c = explain(q, k, v, score=("dot", "dot", "cosine"))
    assert c.score == ("dot", "cosine")


# ------------------------------------------------------------------------ html
def test_html_escapes_labels():
    evil = "<script>alert('x')</script>"
    e = explain([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], [[1.0], [2.0]],
                labels=[evil, "a&b"], value_labels=['"v"'], query_labels=["<q>"])
    for html in (e._repr_html_(), explain([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]],
                                          [[1.0], [2.0]], labels=[evil, "a&b"],
                                          score=["dot", "cosine"])._repr_html_()):
        assert "<script>" not in html
        assert "&lt;script&gt;" in html and "a&amp;b" in html
        assert html.count("<table") >= 3
    h = e._repr_html_()
    assert "&lt;q&gt;" in h and "&quot;v&quot;" in h
    assert "cattn.softmax" in h and f"{e.weights[0]:.3f}" in h


# ------------------------------------------------------------------------ plot
def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    d = newspaper("en")
    e = explain(d["query"], d["keys"], d["values"], labels=d["labels"])
    ax = e.plot(path=tmp_path / "one.png")
    assert [t.get_text() for t in ax.get_xticklabels()] == d["labels"]
    assert (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    c = explain(d["query"], d["keys"], d["values"], labels=d["labels"], score=list(SCORES),
                additive_weight=d["additive_weight"])
    axes = c.plot(path=tmp_path / "four.png")
    assert len(axes) == 4
    assert [a.get_title() for a in axes] == [f"softmax weights ({s})" for s in SCORES]
    assert (tmp_path / "four.png").stat().st_size > 1000


def test_plot_zh_with_a_cjk_font(tmp_path):
    """With a CJK font installed, Chinese titles and labels are drawn in it
    (without one they fall back to English: test_cli_plot covers that)."""
    pytest.importorskip("matplotlib")
    import importlib
    mod = importlib.import_module("cattn.explain")
    if not mod.cjk_font_available():
        pytest.skip("no CJK font installed")
    d = newspaper("zh")
    e = explain(d["query"], d["keys"], d["values"], labels=d["labels"], lang="zh")
    ax = e.plot(path=tmp_path / "zh.png")
    assert "权重" in ax.get_title()
    ticks = ax.get_xticklabels()
    assert [t.get_text() for t in ticks] == d["labels"]
    assert all(t.get_fontfamily() == [mod._cjk_font()] for t in ticks)
    assert (tmp_path / "zh.png").stat().st_size > 1000


def test_plot_on_given_axes():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    fig = Figure()
    ax = fig.add_subplot()
    e = explain(np.eye(2), np.eye(2), np.eye(2))
    assert e.plot(ax=ax) is ax
    assert ax.images[0].get_array().shape == (2, 2)
    np.testing.assert_allclose(ax.images[0].get_array(), e.weights, **TIGHT)


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    e = explain(np.eye(2), np.eye(2), np.eye(2))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"cattn\[plot\]"):
        e.plot(path=tmp_path / "x.png")


# ------------------------------------------------------------------------ demo
def test_demo_english_numbers_are_real():
    text = run_demo("en")
    d = newspaper("en")
    for name in SCORES:
        assert f"('{name}')" in text
        kw = {"additive_weight": d["additive_weight"]} if name == "additive" else {}
        _, w = _reference(d["query"][None], d["keys"], d["values"], score=name, **kw)
        assert int(np.argmax(w[0])) == 1 and int(np.argmin(w[0])) == 2
        for j in range(4):
            assert f"{100 * w[0, j]:.1f}%" in text
    assert text.count("Stage 1 \u2014") == 4 and text.count("Stage 3 \u2014") == 4
    assert "technology gets the most attention" in text


def test_demo_chinese():
    text = run_demo("zh")
    for word in ("体育", "科技", "股票", "健康", "查询", "键", "值",
                 "阶段一", "阶段二", "阶段三", "结论"):
        assert word in text, word
    assert text.count("阶段二") >= 4
    with pytest.raises(ValueError):
        run_demo("fr")


# ------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv", [["demo"], ["demo", "--lang", "zh"], ["info"], ["--help"],
                                  ["demo", "--help"], ["info", "--help"], ["bench", "--help"],
                                  ["--version"]])
def test_cli_ok(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.strip()
    if argv == ["demo"]:
        assert "Stage 3" in out and "technology" in out
    if argv == ["info"]:
        assert cattn.__version__ in out


@pytest.mark.parametrize("argv", [[], ["nope"], ["demo", "--lang", "fr"], ["demo", "extra"],
                                  ["info", "--verbose"], ["--bogus"]])
def test_cli_usage_errors(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error:" in err[-1] and err[-1].startswith("cattn")
    if argv[:1] in (["demo"], ["info"]) and len(argv) == 2:
        # a stray argument is reported with the usage of its command
        assert err[0].startswith(f"usage: cattn {argv[0]}")


def test_cli_bench_points_at_the_source_checkout(capsys):
    # the benchmark runner is not installed: "cattn bench" says how to run it
    assert main(["bench", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cattn: error:") and "python -m tools.bench" in err
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "python -m tools.bench" in out and "--backward" in out


# ------------------------------------------- the benchmark runner (tools/bench)
@pytest.fixture
def bench_runner(monkeypatch):
    """tools.bench.runner of the source checkout (absent from an installed
    wheel's test run: skipped there)."""
    if not (ROOT / "tools" / "bench" / "runner.py").is_file():
        pytest.skip("needs the source checkout's tools/bench")
    monkeypatch.syspath_prepend(str(ROOT))
    import tools.bench.runner as runner
    return runner


def _no_workers(*args, **kwargs):
    raise AssertionError("a worker was started: the error came after the run began")


@pytest.mark.parametrize("opt", ["--json", "--plot"])
def test_bench_unwritable_output_fails_before_the_run(bench_runner, monkeypatch, tmp_path,
                                                      capsys, opt):
    monkeypatch.setattr(bench_runner, "_Worker", _no_workers)
    for path in (tmp_path / "missing" / "out.file", tmp_path):   # no such dir; a directory
        with pytest.raises(SystemExit) as exc:
            bench_runner.main([opt, str(path), "--shapes", "tiny"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert opt in err and str(path) in err and "cannot write" in err


@pytest.mark.parametrize("opt", ["--json", "--plot"])
def test_bench_empty_file_name_is_an_error(bench_runner, monkeypatch, capsys, opt):
    monkeypatch.setattr(bench_runner, "_Worker", _no_workers)
    with pytest.raises(SystemExit) as exc:
        bench_runner.main([opt, "", "--shapes", "tiny"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert opt in err and "file name" in err


def test_bench_err_cells_give_the_reason(bench_runner, tmp_path, capsys):
    # D = 10**12: the inputs cannot be allocated, every call fails with MemoryError
    out = tmp_path / "run.json"
    rc = bench_runner.main(["--shapes", "tiny", "1x1x2x2x1000000000000", "--impls", "numpy",
                            "--dtypes", "float32", "--threads", "1", "--repeat", "1",
                            "--min-time", "0.001", "--gemm-n", "32", "--no-progress",
                            "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    row = next(ln for ln in text.splitlines() if "1000000000000" in ln and "|" in ln)
    mark = row.split("err [", 1)[1].split("]", 1)[0]
    note = next(ln for ln in text.splitlines() if ln.startswith("[%s] " % mark))
    assert "numpy" in note and "MemoryError" in note
    tiny = next(ln for ln in text.splitlines() if ln.lstrip("| ").startswith("tiny ("))
    assert "err" not in tiny
    import json
    results = json.loads(out.read_text())["results"]
    bad = next(r for r in results if r["dims"][-1] == 10**12)
    assert "MemoryError" in bad["impls"]["numpy"]["error"]


def test_bench_backward_mode(bench_runner, tmp_path, capsys):
    # --backward: forward + backward and the backward alone, side by side
    # (numpy here: torch may be missing); the rates follow from the times
    out = tmp_path / "run.json"
    rc = bench_runner.main(["--backward", "--shapes", "1x2x32x48x16", "--causal",
                            "--impls", "cattn", "numpy", "--dtypes", "float32", "--threads",
                            "1", "--repeat", "1", "--min-time", "0.001", "--gemm-n", "32",
                            "--no-progress", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    header = next(ln for ln in text.splitlines() if ln.startswith("| ") and "shape" in ln)
    for col in ("cattn fwd+bwd ms", "numpy fwd+bwd ms", "cattn bwd ms", "numpy bwd ms",
                "bwd cattn/numpy", "cattn bwd GFLOP/s"):
        assert col in header
    row = next(ln for ln in text.splitlines() if "(1,2,32,48,16)" in ln and "|" in ln)
    assert "err" not in row and "skip" not in row
    assert "causal" not in row          # Lq != Lk: no causal row
    import json
    results = json.loads(out.read_text())["results"]
    assert sorted(r["stage"] for r in results) == ["bwd", "fwd_bwd"]
    for r in results:
        for impl in ("cattn", "numpy"):
            d = r["impls"][impl]
            fwd_flops = 4.0 * 2 * 32 * 48 * 16
            factor = 2.5 if r["stage"] == "bwd" else 3.5
            assert d["gflops"] == pytest.approx(factor * fwd_flops / d["median_s"] / 1e9)


def test_bench_backward_refuses_plot(bench_runner, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_runner, "_Worker", _no_workers)
    with pytest.raises(SystemExit) as exc:
        bench_runner.main(["--backward", "--plot", str(tmp_path / "a.png")])
    assert exc.value.code == 2
    assert "--backward" in capsys.readouterr().err


@pytest.mark.parametrize("variant, dims", [("plain", (1, 2, 6, 6, 4)),
                                           ("causal", (1, 1, 5, 8, 4))])
def test_bench_backward_baselines_compute_the_gradients(bench_runner, variant, dims):
    """The benchmarks' backward implementations (cattn, the naive NumPy and,
    when installed, torch) give the gradients of cattn.reference's attention
    (central differences): the baselines time the same work."""
    from _oracle import fd_grad
    from benchmarks.common import BackwardImpl
    ran = []
    for impl in ("cattn", "numpy", "torch"):
        try:
            b = BackwardImpl(impl, 1, variant, dims, "float64")
        except NotImplementedError:
            continue
        try:
            got = [b.fwd_bwd()[:3], b.bwd()[:3], b.bwd()[:3]]   # bwd twice: nothing accumulates
        finally:
            b.close()
        q, k, v, dout = b.inputs
        for i, x in enumerate((q, k, v)):
            def loss(y, i=i):
                args = [q, k, v]
                args[i] = y
                return float(np.sum(reference.attention(*args, causal=variant == "causal")
                                    * dout))
            want = fd_grad(loss, x)
            for g in got:
                np.testing.assert_allclose(np.asarray(g[i]), want, rtol=1e-6, atol=1e-7,
                                           err_msg="%s, gradient %d" % (impl, i))
        ran.append(impl)
    assert ran[:2] == ["cattn", "numpy"]


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "weights.png"
    assert main(["demo", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in capsys.readouterr().out
    png_zh = tmp_path / "weights_zh.png"
    assert main(["demo", "--lang", "zh", "--plot", str(png_zh)]) == 0
    assert png_zh.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _python_m(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("MPLBACKEND", "Agg")
    return subprocess.run([sys.executable, "-m", "cattn", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)


def test_python_m_cattn_demo():
    r = _python_m("demo")
    assert r.returncode == 0, r.stderr
    assert "Stage 1" in r.stdout and "technology gets the most attention" in r.stdout
    r = _python_m("demo", "--lang", "zh")
    assert r.returncode == 0, r.stderr
    assert "阶段三" in r.stdout and "科技" in r.stdout


def test_python_m_cattn_errors():
    r = _python_m("nope")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].startswith("cattn: error:")
    r = _python_m("demo", "--lang", "xx")
    assert r.returncode == 2 and "--lang" in r.stderr
    r = _python_m("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "bench" in r.stdout


def test_top_level_cattn_explain_is_the_function():
    # ``cattn.explain(...)`` must work, also after ``import cattn.explain``
    # (which binds the submodule as an attribute of the package).
    code = ("import cattn\n"
            "e = cattn.explain([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], [[1.0], [2.0]])\n"
            "print(type(e).__name__)\n"
            "import cattn.explain\n"
            "print(callable(cattn.explain), cattn.Explanation.__name__)\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["Explanation", "True", "Explanation"]


# ------------------------------------------------------------------------ docs
@pytest.mark.parametrize("doc, lang", [("tutorial.md", "en"), ("tutorial.zh.md", "zh")])
def test_tutorial_output_is_real(doc, lang):
    """The outputs pasted in the tutorials are what cattn prints today."""
    import doctest
    import re

    path = ROOT / "docs" / doc
    if not path.exists():
        pytest.skip(f"{doc} not present")
    text = path.read_text(encoding="utf-8")
    d = newspaper(lang)
    kw = dict(labels=d["labels"], value_labels=d["value_labels"], lang=lang)
    produced = [str(explain(d["query"], d["keys"], d["values"], **kw)),
                str(explain(d["query"], d["keys"], d["values"], score=list(SCORES),
                            additive_weight=d["additive_weight"], **kw)),
                run_demo(lang)]
    # the last digits of the fused-vs-staged difference depend on the machine
    norm = lambda s: re.sub(r"= \d\.\de[-+]\d\d", "= DIFF", s).strip()
    produced = [norm(p) for p in produced]
    blocks = re.findall(r"```text\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        assert any(norm(block) in p for p in produced), block[:200]

    # the >>> examples, run after the "import numpy as np / import cattn" setup
    setup = re.findall(r"```python\n(import numpy as np\nimport cattn\n.*?)```", text, re.S)[0]
    examples = "\n".join(re.findall(r"```python\n(>>> .*?)```", text, re.S))
    globs = {}
    with np.printoptions(precision=4, suppress=True):
        exec(setup, globs)
        test = doctest.DocTestParser().get_doctest(examples, globs, doc, str(path), 0)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=lambda s: None)
    assert test.examples and runner.failures == 0, f"{runner.failures} doc examples fail"


# ------------------------------------------------- public example, HTML page
def test_newspaper_is_public():
    d = newspaper("zh")
    assert d["labels"] == ["体育", "科技", "股票", "健康"]
    assert cattn.explain.newspaper("en")["labels"][1] == "technology"
    import cattn._demo as demo
    assert demo.newspaper is newspaper
    with pytest.raises(ValueError):
        newspaper("fr")


def test_masks_come_from_the_reference(qkv, monkeypatch):
    q, k, v = qkv
    seen = []
    real = reference.mask_scores
    monkeypatch.setattr(reference, "mask_scores", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    from cattn.explain import compute
    monkeypatch.setattr(compute, "mask_scores", reference.mask_scores)
    explain(q, k, v, causal=True, check=False)
    assert seen and seen[0]["causal"] is True


def test_html_labels_escaped_once_and_vectors_shown():
    e = explain([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0], [2.0]], query_labels=["Q<1>"])
    h = e.to_html()
    assert "Q&lt;1&gt;" in h and "&amp;lt;" not in h
    assert "Q = [1.000, 0.000]" in h and "k = [0.000, 1.000]" in h
    assert "[2.000]" in h                                   # v_i


def test_html_queries_in_rows_and_masked_marked():
    rng = np.random.default_rng(3)
    e = explain(rng.standard_normal((3, 2)), rng.standard_normal((3, 2)),
                rng.standard_normal((3, 2)), causal=True)
    h = e.to_html()
    stage2 = h[h.index("cattn.softmax"):h.index("cattn.aggregate")]
    rows = stage2.split("<tr>")[2:]                        # the query rows
    assert len(rows) == 3
    # causal: query i sees keys 0..i, so row i has 2 - i masked cells
    assert [r.count('class="masked"') for r in rows] == [2, 1, 0]
    assert "masked" in stage2 and "\u2014" in stage2


def test_full_page_and_save_html(tmp_path):
    d = newspaper("zh")
    e = explain(d["query"], d["keys"], d["values"], labels=d["labels"], lang="zh")
    frag, page = e.to_html(), e.to_html(full_page=True)
    assert e._repr_html_() == frag and "<html" not in frag
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "<style>" in page and 'lang="zh-Hans"' in page and frag in page
    e.save_html(tmp_path / "e.html")
    assert (tmp_path / "e.html").read_text(encoding="utf-8") == page
    c = explain(d["query"], d["keys"], d["values"], score=["dot", "cosine"])
    assert c.to_html(full_page=True).startswith("<!DOCTYPE html>")


def test_cli_html(tmp_path, capsys):
    for lang in ("en", "zh"):
        path = tmp_path / f"demo_{lang}.html"
        assert main(["demo", "--lang", lang, "--html", str(path)]) == 0
        page = path.read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>") and page.count('class="cattn-explain"') == 4
        assert str(path) in capsys.readouterr().out
    assert main(["demo", "--html", str(tmp_path / "no" / "such" / "dir.html")]) == 1


def test_plot_marks_masked_cells():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    ax = Figure().add_subplot()
    e = explain(np.eye(3), np.eye(3), np.eye(3), causal=True)
    e.plot(ax=ax)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("\u2014") == 3 and "0.00" not in texts


def test_cli_zh_plot_without_cjk_font_says_so(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from cattn.explain import plot
    monkeypatch.setattr(plot, "cjk_font", lambda: None)
    png = tmp_path / "zh.png"
    assert main(["demo", "--lang", "zh", "--plot", str(png)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cattn: note:") and "font" in err[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
