"""The ``cattn`` command line: ``cattn demo``, ``cattn info``, ``cattn bench``.

``main(argv)`` returns the exit status instead of exiting, so it can be
called from Python (``cattn._cli.main(["demo", "--lang", "zh"])``); the
console script and ``python -m cattn`` pass it to ``sys.exit``.

Exit status: 0 on success, 2 for wrong arguments (argparse prints a short
usage line and a one-line error), 1 when a command fails.
"""

import argparse
import os
import sys
import warnings

__all__ = ["main", "build_parser"]

_PROG = "cattn"

_BENCH_HOWTO = (
    "  python setup.py build_ext --inplace          # build cattn in the checkout\n"
    "  python -m tools.bench --quick                # cattn, NumPy, PyTorch side by side\n"
    "  python -m tools.bench --backward --quick     # training: forward + backward, backward alone\n"
    "  python -m tools.bench --help                 # its options (shapes, threads, --json, --plot)\n"
    "  PYTHONPATH=$PWD asv run --python=same --quick  # the asv suites in benchmarks/")
_BENCH_HELP = (
    "usage: cattn bench\n\n"
    "The benchmarks are not part of the installed package.  From the root of a\n"
    "source checkout of cattn run:\n\n" + _BENCH_HOWTO)


def _emit(text, stream=None):
    """Print ``text``; never die on a console that cannot encode it."""
    stream = sys.stdout if stream is None else stream
    try:
        print(text, file=stream)
    except UnicodeEncodeError:
        enc = getattr(stream, "encoding", None) or "ascii"
        print(text.encode(enc, errors="replace").decode(enc, errors="replace"), file=stream)
    stream.flush()


def _error(msg):
    _emit(f"{_PROG}: error: {msg}", sys.stderr)


def _version():
    try:
        import cattn
        return getattr(cattn, "__version__", "unknown")
    except Exception:  # pragma: no cover - broken install
        return "unknown"


def build_parser():
    """The argparse parser of the ``cattn`` command."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="cattn: fast, exact attention for NumPy on multicore CPUs.",
        epilog="Run 'cattn COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="attention explained step by step with a newspaper example",
        description="Walk through attention's three stages (similarity, softmax, "
                    "weighted sum) with the newspaper example, for every similarity "
                    "function (dot, scaled_dot, cosine, additive).")
    demo.add_argument("--lang", choices=("en", "zh"), default="en",
                      help="language of the explanation (default: en)")
    demo.add_argument("--plot", metavar="FILE.png", default=None,
                      help="also save a heatmap of the attention weights to FILE "
                           "(needs matplotlib: pip install \"cattn[plot]\")")
    demo.add_argument("--html", metavar="FILE.html", default=None,
                      help="also write the explanation as a standalone web page to FILE")

    info = sub.add_parser(
        "info", help="show how cattn was built and how it runs (threads, SIMD, ...)",
        description="Print cattn's build and runtime configuration "
                    "(cattn.show_config()).")

    sub.add_parser(
        "bench", help="how to run the benchmarks (they live in the source checkout)",
        description=_BENCH_HELP, add_help=False)
    parser.command_parsers = {"demo": demo, "info": info}
    return parser


def _run_demo(ns):
    from ._demo import run_demo
    if ns.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _error("--plot needs matplotlib; install it with: pip install \"cattn[plot]\"")
            return 1
    try:
        # a library warning (e.g. no Chinese font for the plot) becomes a
        # one-line note on stderr
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            text = run_demo(lang=ns.lang, plot=ns.plot, html=ns.html)
    except OSError as exc:  # e.g. the plot or page file cannot be written
        _error(f"cannot write {exc.filename or ns.plot or ns.html}: {exc}")
        return 1
    for w in caught:
        if issubclass(w.category, UserWarning):
            _emit(f"{_PROG}: note: {w.message}", sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _emit(text)
    return 0


def _run_info(ns):
    try:
        import cattn
        show = cattn.show_config
    except (ImportError, AttributeError) as exc:
        _error(f"cannot show the configuration: {exc}")
        return 1
    result = show()
    if isinstance(result, str) and result:
        _emit(result)
    return 0


def _run_bench(args):
    """``cattn bench [ANY]``: say where the benchmarks are and how to run them.

    The benchmark runner and its worker processes are development tools of
    the source tree (``tools/bench/``, ``benchmarks/``), not part of the
    installed package, so this command only points at them: with ``-h`` /
    ``--help`` it exits 0, otherwise 1 (nothing was benchmarked).
    """
    if any(a in ("-h", "--help") for a in args):
        _emit(_BENCH_HELP)
        return 0
    _error("the benchmarks are not part of the installed package; "
           "run them from a source checkout of cattn:\n" + _BENCH_HOWTO)
    return 1


def _exit_code(rc):
    if rc is None:
        return 0
    if isinstance(rc, bool):
        return int(rc)
    if isinstance(rc, int):
        return rc
    _emit(str(rc), sys.stderr)  # sys.exit("message") convention
    return 1


def main(argv=None):
    """Run the ``cattn`` command line and return its exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:  # e.g. "cattn demo | head": stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # pragma: no cover
            pass
        return 1


def _main(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    # "cattn bench ..." answers the same whatever follows (it only explains
    # where the benchmarks are), so it is split off before argparse can
    # reject options meant for the benchmark runner.
    if argv and argv[0] == "bench":
        return _run_bench(argv[1:])
    parser = build_parser()
    try:
        ns, extra = parser.parse_known_args(argv)
        if extra:  # reported with the usage of the command they were given to
            parser.command_parsers.get(ns.command, parser).error(
                "unrecognized arguments: " + " ".join(extra))
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        return _exit_code(exc.code)
    if ns.command is None:
        parser.print_usage(sys.stderr)
        _error("a command is required (demo, info or bench)")
        return 2
    if ns.command == "demo":
        return _run_demo(ns)
    if ns.command == "info":
        return _run_info(ns)
    return _run_bench([])  # pragma: no cover - "bench" is split off above


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
