"""Mesh helpers and axis-aware reductions (multi-device parts run in a subprocess)."""

import jax.numpy as jnp
import numpy as np
import pytest

from reweight import parallel, testing


def test_reductions_single_device():
  x = jnp.array([1.0, 5.0, -2.0, 4.0])
  where = jnp.array([True, False, True, True])
  assert float(parallel.batch_sum(x, where=where)) == 3.0
  assert float(parallel.batch_max(x, where=where)) == 4.0
  assert float(parallel.batch_min(x, where=where)) == -2.0
  assert float(parallel.batch_mean(x, where=where)) == 1.0
  assert float(parallel.batch_mean(x, where=jnp.zeros(4, bool))) == 0.0
  np.testing.assert_array_equal(parallel.segment_sum(x, jnp.array([0, 1, 0, 1]), 3),
                                [-1.0, 9.0, 0.0])


def test_make_mesh_errors():
  with pytest.raises(ValueError, match="num_devices=99 is not in"):
    parallel.make_mesh(99)
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match="cannot shard an array of shape \\(\\)"):
    parallel.shard_batch({"x": np.float32(1.0)}, mesh)


CODE = """
import json, numpy as np, jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from reweight import parallel
mesh = parallel.make_mesh()
rng = np.random.default_rng(0)
x = rng.normal(size=64).astype(np.float32)
where = rng.random(64) > 0.5
seg = rng.integers(0, 3, 64)
g = parallel.shard_batch({"x": x, "w": where, "s": seg}, mesh)
def local(b):
  return (parallel.batch_sum(b["x"], "data", where=b["w"]),
          parallel.batch_max(b["x"], "data", where=b["w"]),
          parallel.batch_min(b["x"], "data", where=b["w"]),
          parallel.batch_mean(b["x"], "data", where=b["w"]),
          parallel.segment_sum(b["x"], b["s"], 3, "data"))
out = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P(),
                            check_vma=False))(g)
try:
  parallel.shard_batch({"x": np.zeros(12)}, mesh)
  err = ""
except ValueError as e:
  err = str(e)
print(json.dumps({"out": [np.asarray(o).tolist() for o in out],
                  "sharding": str(g["x"].sharding.spec), "ndev": len(mesh.devices.flat),
                  "err": err}))
"""


@pytest.mark.multidevice
def test_reductions_under_shard_map_match_numpy():
  res = testing.run_with_devices(CODE, 8)
  rng = np.random.default_rng(0)
  x = rng.normal(size=64).astype(np.float32)
  where = rng.random(64) > 0.5
  seg = rng.integers(0, 3, 64)
  s, mx, mn, mean, segs = res["out"]
  np.testing.assert_allclose(s, x[where].sum(), rtol=1e-5)
  assert mx == pytest.approx(x[where].max()) and mn == pytest.approx(x[where].min())
  np.testing.assert_allclose(mean, x[where].mean(), rtol=1e-5)
  np.testing.assert_allclose(segs, [x[seg == k].sum() for k in range(3)], rtol=1e-5, atol=1e-6)
  assert res["ndev"] == 8 and "data" in res["sharding"]
  assert "divisible by 8" in res["err"]
