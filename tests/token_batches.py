"""A bigram language model over a ragged token batch, in JAX and re-derived in NumPy: the
shared set-up of the token-weighting tests."""

import jax
import jax.numpy as jnp
import numpy as np

V = 5  # vocabulary size; the bigram model's parameters are logits [V, V]


def bigram_batch(rng, lengths, t):
  """A bigram-LM batch whose sequences have the given numbers of valid tokens."""
  b = len(lengths)
  inputs = rng.integers(0, V, (b, t)).astype(np.int32)
  targets = rng.integers(0, V, (b, t)).astype(np.int32)
  mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
  return {"inputs": inputs, "targets": targets, "token_mask": mask}


def per_token_ce(params, batch):
  """The bigram model's per-token cross-entropy ``[B, T]`` in JAX."""
  logp = jax.nn.log_softmax(params[batch["inputs"]])
  return -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_per_token_ce(params, batch):
  """`per_token_ce` re-derived in NumPy (float64)."""
  logp = np_log_softmax(np.asarray(params)[batch["inputs"]])
  return -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]


def bigram_setup():
  """Bigram parameters and a batch of four sequences of 1, 16, 3 and 9 valid tokens."""
  rng = np.random.default_rng(0)
  batch = bigram_batch(rng, [1, 16, 3, 9], 16)
  params = rng.normal(size=(V, V)).astype(np.float32)
  return params, batch
