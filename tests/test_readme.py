"""The README's Python examples run as pasted, in order, in one session (as
a reader pastes them; later examples reuse the quick start's names).  Those
that need PyTorch or start a Dask cluster are only compiled."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S) \
    if README.exists() else []


@pytest.mark.skipif(not BLOCKS, reason="needs the source tree's README")
def test_readme_examples_run_in_one_session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    for i, code in enumerate(BLOCKS):
        compiled = compile(code, f"README.md python block {i + 1}", "exec")
        if "import torch" in code or "Client(" in code:
            continue        # valid Python; running it needs torch / a cluster
        exec(compiled, namespace)
