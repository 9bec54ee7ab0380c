"""lt_utils: the helper package of the book *Rethinking the Bias of Foundation Models under Long-tailed
Distribution* (Chen et al., ICML 2025).

``import lt_utils as lt`` gives the front door: the names the chapters and their exercises call (``lt.<Tab>``).
Everything else stays reachable through its module, e.g. ``lt.training.train`` or ``lt.augment.TensorAugment``.
The modules form layers whose imports only go down; DESIGN.md draws them and is tested.
"""
import gc

from . import (augment, backdoor, cache, data, decoded, distributed, experiments, explain, groups, lab, losses,
               metrics, models, paper, peft, plots, prior, profiles, runs, standin, training)
from .backdoor import backdoor_adjust
from .cache import cached
from .data import balanced_subset, load_dataset
from .experiments import control_runs, headline_comparison
from .explain import count_flops, grad_cam, inference_cost
from .groups import GROUP_NAMES, data_groups, prior_groups
from .losses import cross_entropy_loss, gla_train_loss, logit_adjusted_loss
from .metrics import accuracy, accuracy_report, knn_predict, report_row
from .models import register_foundation_model
from .plots import (plot_causal_graph, plot_group_bars, plot_group_matrix, plot_long_tail,
                    plot_per_class_vs_prior, plot_prior_scatter, set_style, show_cams, show_images,
                    show_markdown)
from .prior import estimate_prior, rank_correlation
from .profiles import profile
from .runs import estimate_pretrain_prior, fine_tune, load_fine_tuned, load_split, test_transform, zero_shot
from .version import __version__

# The front door: what the chapters and their exercises call (DESIGN.md lists each with its signature).
__all__ = [
    # settings and cache
    "profile", "cached",
    # data and groups
    "load_dataset", "load_split", "balanced_subset", "GROUP_NAMES", "data_groups", "prior_groups",
    # the lab world (a module: lt.lab.make_world, lt.lab.upstream_priors)
    "lab",
    # the paper's datasets at full scale (a module: lt.paper.results_table, for the results page)
    "paper",
    # models
    "register_foundation_model",
    # losses, the prior, metrics, fusion
    "cross_entropy_loss", "logit_adjusted_loss", "gla_train_loss",
    "estimate_prior", "rank_correlation",
    "accuracy", "accuracy_report", "report_row", "knn_predict",
    "backdoor_adjust",
    # cached runs and experiments
    "zero_shot", "fine_tune", "estimate_pretrain_prior", "load_fine_tuned", "test_transform",
    "headline_comparison", "control_runs",
    # explaining and costing
    "grad_cam", "count_flops", "inference_cost",
    # figures and prose
    "set_style", "show_markdown", "plot_long_tail", "plot_group_bars", "plot_group_matrix", "plot_prior_scatter",
    "plot_per_class_vs_prior", "show_images", "show_cams", "plot_causal_graph",
]

# The imports above allocate ~0.5 M objects (torch, scipy, matplotlib...) that live as long as the process. Frozen,
# the cyclic garbage collector no longer walks them: a kernel that imported lt_utils shuts down ~2 s sooner
# (benchmarks/RESULTS.md). Only objects that already exist are frozen; everything made later is collected as usual.
gc.freeze()
