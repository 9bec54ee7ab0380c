"""lt_utils: the helper package of the book *Rethinking the Bias of Foundation Models under Long-tailed
Distribution* (Chen et al., ICML 2025). ``import lt_utils as lt``; see DESIGN.md for the map."""
# --- profiles & cache
from .profiles import PROFILE_NAMES, Profile, get_device, profile, set_seed, setup_cpu
from .cache import atomic_torch_save, cache_dir, cache_key, cached, safe_torch_load
# --- data
from .data import (CLIP_MEAN, CLIP_STD, DATASET_NAMES, GROUP_NAMES, ImageListDataset, InMemoryDataset, TensorAugment,
                   balanced_subset, cifar100_lt_groups, data_groups, load_dataset, long_tail_counts, make_loader,
                   prior_groups, torchvision_transforms)
# --- lab
from . import lab
# --- models & peft
from .models import (FOUNDATION_MODELS, Classifier, CosineHead, FoundationModel, LinearHead, ZeroShotHead,
                     build_classifier, grad_cam, load_checkpoint, load_foundation_model, register_foundation_model,
                     save_checkpoint, save_foundation_model)
from .peft import PEFT_METHODS, adaptformer_bottleneck, apply_peft, count_parameters
# --- losses, prior, metrics, backdoor, plots
from .losses import (LOSS_NAMES, PRIOR_EPS, AdjustedLoss, balanced_softmax_loss, cross_entropy_loss,
                     gla_train_loss, logit_adjusted_loss, make_loss)
from .prior import calibrate_temperature, estimate_prior, prior_optimality_gap, rank_correlation
from .metrics import (accuracy, accuracy_report, group_accuracy, group_matrix, knn_accuracy, knn_predict,
                      per_class_accuracy, predict, report_row)
from .backdoor import BACKDOOR_MODES, backdoor_adjust, count_flops, inference_cost
from .plots import (GROUP_COLORS, glue, plot_causal_graph, plot_group_bars, plot_group_matrix, plot_long_tail,
                    plot_per_class_vs_prior, plot_prior_scatter, set_style, show_cams, show_images)
# --- train & cli
from .train import (epoch_indices, estimate_pretrain_prior, fine_tune, headline_comparison, init_distributed,
                    load_fine_tuned, test_transform, train, train_step, trainable_state, zero_shot)

__version__ = "0.1.0"
