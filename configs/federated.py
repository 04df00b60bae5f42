"""Federated digits, non-iid clients with heterogeneous unknown participation: FedAvg vs FedAU.

python experiments/federated.py --config=configs/federated.py --workdir=workdir/federated

The digits TRAIN split is divided among ``num_clients`` clients by a Dirichlet(alpha) split
over labels; each client keeps ``val_fraction`` of its examples out of training (its
validation part). Client i participates in each round with probability
p_i = p_low + (p_high - p_low) * s_i, s_i = the share of its examples with label < 5: the
clients holding mostly digits 5-9 take part rarely. The server never sees p.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.num_clients = 20
  c.alpha = 0.1  # Dirichlet concentration of the label split (small: few classes a client)
  c.min_client_size = 10  # redraw the split until every client has this many
  c.val_fraction = 0.2  # of every client's examples, held out (validation)
  c.p_low = 0.02  # participation probability of a client with no label < 5
  c.p_high = 0.8  # ... and of one with only labels < 5
  c.rare_quantile = 1 / 3  # "rare" clients: the third with the lowest p (per seed)
  c.seeds = (0, 1, 2)

  # A linear softmax model (mlp without hidden layer): the clients' objectives are convex
  # and no model fits every client perfectly, so the aggregation weights decide where the
  # global optimum lies (the bias FedAU removes is a bias of the objective).
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64, "hidden": ()})
  c.rounds = 200
  c.eval_every = 5
  c.local_steps = 5
  c.batch_size = 16
  c.learning_rates = (0.3, 1.0, 3.0, 10.0)  # local SGD lr, chosen per method and seed on val
  c.global_lr = 1.0

  # Aggregation rules of reweight.train.federated.coefficients:
  #   fedavg: n_i / sum_{participants} n_j (sizes, renormalised over the participants)
  #   uniform: 1 / |participants|
  #   fedau: omega_i / N, omega_i FedAU's online estimate of 1 / p_i (cutoff below)
  #   known: 1 / (N p_i), the oracle FedAU estimates (not available to a real server)
  c.methods = ("fedavg", "uniform", "fedau", "known")
  c.cutoff = None  # FedAU's K (None: no cutoff, the reference code's default)
  c.comparisons = (("fedau", "fedavg"), ("fedau", "uniform"), ("known", "fedavg"))
  return c
