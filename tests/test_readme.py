"""The README's runnable code blocks run.

A block is runnable when the line right before its opening ```` ```python ```` fence is
``<!-- runnable -->`` (an HTML comment, invisible on GitHub). Other blocks (```` ```bash ````,
and the sketches that leave the model or the data to the reader) are not run here.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- runnable -->"
BLOCK = re.compile(r"^(?P<marker><!-- runnable -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```$",
                   re.DOTALL | re.MULTILINE)


def _blocks():
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  out = []
  for m in BLOCK.finditer(text):
    if m.group("marker"):
      line = text[:m.start()].count("\n") + 2  # the line of the opening fence
      out.append(pytest.param(m.group("lang"), m.group("code"), line, id=f"line{line}"))
  return out


BLOCKS = _blocks()


def test_readme_has_runnable_blocks():
  # meta reweighting, LoRA on linen, LoRA/DoRA on NNX
  assert len(BLOCKS) >= 3


@pytest.mark.parametrize("lang,code,line", BLOCKS)
def test_readme_block_runs(lang, code, line, capsys):
  assert lang == "python", f"README.md:{line}: only python blocks can be marked runnable"
  exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})  # noqa: S102
  assert capsys.readouterr().out  # every runnable block prints something to look at
