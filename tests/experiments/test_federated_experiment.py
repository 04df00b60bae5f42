"""The federated experiment at a tiny size: it runs end to end, FedAU's final weights are
re-derived in NumPy from the saved participation history (closed-form interval counting
with the cutoff), the participation probabilities follow their rule, the learning rate is
the validation argmax, and the reported test and per-client numbers are those of the saved
parameters (a NumPy forward pass)."""

import os

import numpy as np
import pytest
from experiment_checks import table_row

from configs import federated as config_lib
from experiments import federated as exp
from reweight.data import datasets
from reweight.train import report


def tiny_config():
  c = config_lib.get_config()
  c.seeds = (0,)
  c.num_clients = 6
  c.min_client_size = 20
  c.model_kwargs.hidden = ()  # the linear model of the real config
  c.rounds = 12
  c.eval_every = 4
  c.local_steps = 2
  c.learning_rates = (0.1,)  # the lr choice is tested on synthetic records below
  c.methods = ("fedavg", "fedau")
  c.cutoff = 4
  c.comparisons = (("fedau", "fedavg"),)
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("federated"))
  config = tiny_config()
  return config, workdir, exp.run(config, workdir, progress=False)


def fedau_weights(participation, cutoff):
  """FedAU's weights from a ``[rounds, N]`` history, by counting intervals in closed form.

  A stretch of L rounds that ends with a participation records floor((L - 1) / K) intervals
  of length K and then one of length L - K floor((L - 1) / K); a trailing stretch of L rounds
  without participation records floor(L / K) intervals of K. The weight is the mean of the
  recorded intervals (1 when there are none).
  """
  out = []
  for q in np.asarray(participation, bool).T:
    times = np.flatnonzero(q) + 1
    stretches = np.diff(np.concatenate([[0], times]))
    intervals = []
    for length in stretches:
      m = (length - 1) // cutoff
      intervals += [cutoff] * m + [length - cutoff * m]
    intervals += [cutoff] * ((len(q) - (times[-1] if times.size else 0)) // cutoff)
    out.append(np.mean(intervals) if intervals else 1.0)
  return np.array(out)


def mlp_logits(path, x):
  with np.load(path) as p:
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  h = np.asarray(x, np.float64)
  for i in range(sum(k.endswith("kernel") for k in p) - 1):  # relu hidden layers, if any
    h = np.maximum(h @ p[f"hidden/{i}/kernel"] + p[f"hidden/{i}/bias"], 0)
  return h @ p["head/kernel"] + p["head/bias"]


def test_fedau_weights_are_the_interval_means_of_the_history(finished):
  config, workdir, _ = finished
  for lr in config.learning_rates:
    d = exp.run_dir(workdir, "fedau", lr, 0)
    with np.load(os.path.join(d, "participation.npz")) as f:
      part = f["participation"]
    assert part.shape == (config.rounds, config.num_clients)
    saved = report.read_json(os.path.join(d, "result.json"))
    np.testing.assert_allclose(saved["fedau_weights"], fedau_weights(part, config.cutoff),
                               rtol=1e-6)
    assert np.all(np.asarray(saved["fedau_weights"]) <= config.cutoff)
  # the same participation draws for every method (same simulate seed)
  with np.load(os.path.join(exp.run_dir(workdir, "fedavg", 0.1, 0),
                            "participation.npz")) as f:
    np.testing.assert_array_equal(f["participation"], part)


def test_fedau_closed_form_counts_a_hand_example():
  q = np.array([[1, 0], [0, 0], [0, 0], [1, 0], [0, 0], [0, 1]], bool)
  # K = 2. Client 0: stretches 1 -> [1] and 3 -> [2, 1], trailing 2 rounds -> [2];
  # client 1: one stretch of 6 -> [2, 2, 2] (the cutoff closes rounds 2 and 4).
  np.testing.assert_allclose(fedau_weights(q, 2), [1.5, 2.0])


def test_clients_and_probabilities_follow_the_rule():
  config = tiny_config()
  data = exp.prepare_data(config, 0)
  labels = datasets.load("digits", "train")["label"]
  parts = np.concatenate(data["train_parts"] + data["val_parts"])
  assert sorted(parts.tolist()) == list(range(len(labels)))  # a partition of TRAIN
  for t, v in zip(data["train_parts"], data["val_parts"]):
    assert v.size == int(round(config.val_fraction * (t.size + v.size)))
  shares = np.array([np.mean(labels[t] < 5) for t in data["train_parts"]])
  np.testing.assert_allclose(data["probs"],
                             config.p_low + (config.p_high - config.p_low) * shares)
  np.testing.assert_array_equal(
      data["rare"], data["probs"] <= np.quantile(data["probs"], config.rare_quantile))


def test_choice_and_test_numbers_are_the_saved_models(finished):
  config, workdir, out = finished
  data = exp.prepare_data(config, 0)
  for method in config.methods:
    val_means = {}
    for lr in config.learning_rates:
      d = exp.run_dir(workdir, method, lr, 0)
      pred = mlp_logits(os.path.join(d, "params.npz"), data["x"]).argmax(1)
      accs = [np.mean(pred[v] == data["label"][v]) for v in data["val_parts"]]
      saved = report.read_json(os.path.join(d, "result.json"))
      np.testing.assert_allclose(saved["val_client_accuracy"], accs, atol=1e-12)
      val_means[lr] = np.mean(accs)
    best = max(config.learning_rates, key=lambda lr: val_means[lr])  # first max
    chosen = out["selected"][method][0]
    assert chosen["lr"] == best
    logits = mlp_logits(os.path.join(exp.run_dir(workdir, method, best, 0), "params.npz"),
                        data["test_x"])
    y = data["test_label"]
    correct = logits.argmax(1) == y
    acc_c = np.array([correct[y == c].mean() for c in range(10)])
    client = np.array([[np.mean(data["label"][t] == c) for c in range(10)]
                       for t in data["train_parts"]]) @ acc_c
    rare = data["rare"]
    assert chosen["test_accuracy"] == pytest.approx(correct.mean(), abs=1e-9)
    assert chosen["curve"][-1] == pytest.approx(correct.mean(), abs=1e-6)  # simulate's last
    np.testing.assert_allclose(chosen["client_accuracy"], client, atol=1e-9)
    assert chosen["rare_accuracy"] == pytest.approx(client[rare].mean(), abs=1e-9)
    row = table_row(out["table"], "Final accuracy", method)
    assert row[2] == f"{100 * correct.mean():.1f}"
    assert row[4] == f"{100 * client[rare].mean():.1f}"
    assert row[-1] == f"{best:g}"


def test_outputs_and_restart(finished):
  config, workdir, out = finished
  for name in ("table.md", "summary.json", "curves.png", "clients.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert "cannot be judged at n = 1 seed" in out["table"]
  path = os.path.join(exp.run_dir(workdir, "fedau", 0.1, 0), "result.json")
  before = os.stat(path).st_mtime_ns
  assert exp.run(config, workdir, progress=False)["table"] == out["table"]
  assert os.stat(path).st_mtime_ns == before


def test_select_takes_the_first_best_validation_accuracy():
  runs = {0.03: {"val_client_mean_accuracy": 0.7}, 0.1: {"val_client_mean_accuracy": 0.8},
          0.3: {"val_client_mean_accuracy": 0.8}}
  assert exp.select(runs) == 0.1
  runs[0.3]["val_client_mean_accuracy"] = 0.81
  assert exp.select(runs) == 0.3
