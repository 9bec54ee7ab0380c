"""lt_utils: the helper package of the book *Rethinking the Bias of Foundation Models under Long-tailed
Distribution* (Chen et al., ICML 2025). ``import lt_utils as lt``; see DESIGN.md for the map."""
# --- profiles & cache
from .profiles import PROFILE_NAMES, Profile, get_device, profile, set_seed, setup_cpu
from .cache import atomic_torch_save, cache_dir, cache_key, cached, safe_torch_load
# --- data
# --- lab
# --- models & peft
# --- losses, prior, metrics, backdoor, plots
# --- train & cli

__version__ = "0.1.0"
