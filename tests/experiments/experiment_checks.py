"""Independent checks shared by the experiment tests: a saved run's predictions recomputed in
NumPy from its orbax checkpoint, and reading a row of a Markdown report."""

import os

import numpy as np
import orbax.checkpoint as ocp


def mlp_predictions(run_dir: str, x) -> np.ndarray:
  """Class predictions of the run's final one-hidden-layer MLP, ``relu(x W0 + b0) Wh + bh``,
  computed in float64 from the checkpoint (not through the library's model)."""
  manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
  state = manager.restore(manager.latest_step(),
                          args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  p = state["trainable"]
  x = np.asarray(x, np.float64)
  h = np.maximum(x @ np.asarray(p["hidden"]["0"]["kernel"], np.float64)
                 + np.asarray(p["hidden"]["0"]["bias"], np.float64), 0.0)
  logits = h @ np.asarray(p["head"]["kernel"], np.float64) + np.asarray(p["head"]["bias"])
  return np.argmax(logits, 1)


def table_row(text: str, section: str, method: str) -> list[str]:
  """The cells of the row of ``method`` in the table under ``## section``."""
  body = text.split(f"## {section}\n", 1)[1]
  rows = [line for line in body.splitlines() if line.startswith(f"| {method} |")]
  assert rows, (section, method)
  return [cell.strip() for cell in rows[0].strip("|").split("|")]
