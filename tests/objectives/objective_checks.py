"""NumPy re-derivations shared by the objective-weighting tests."""

import numpy as np


def np_grads(rng, k, shapes=((3, 2), (4,))):
  """K random gradient pytrees ``{"p0": [3, 2], "p1": [4]}`` in float32."""
  return [{f"p{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
          for _ in range(k)]


def flat_grad(g):
  """A gradient pytree as one float64 vector, leaves in key order."""
  return np.concatenate([np.ravel(g[k]).astype(np.float64) for k in sorted(g)])


def np_frank_wolfe(m, iters):
  """Frank–Wolfe for min_{a in simplex} a^T M a, re-derived in NumPy (float64)."""
  k = m.shape[0]
  a = np.full(k, 1.0 / k)
  for _ in range(iters):
    ma = m @ a
    t = int(np.argmin(ma))
    vv, vt, tt = a @ ma, ma[t], m[t, t]
    denom = vv - 2 * vt + tt
    gamma = np.clip((vv - vt) / denom, 0, 1) if denom > 0 else 0.0
    a = (1 - gamma) * a
    a[t] += gamma
  return a
