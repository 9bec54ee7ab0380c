"""Same seed, same result, in any process: a fine-tune recomputed in a fresh process (after a cache loss, in a
cold or a warm build) gives bit-identical logits on the CPU, whatever that process drew from the RNGs before."""
import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent("""
    import sys, torch
    import lt_utils as lt
    from lt_utils import lab
    lab.DOWNSTREAM_N_MAX, lab.VAL_PER_CLASS, lab.TEST_PER_CLASS = 120, 2, 2
    lab.PRETRAIN_CONFIG.update(corpus_size=512, epochs=1)
    lab.pretrain("lab-clip", progress=False)  # pre-training re-seeds the global RNG: draw after it
    torch.manual_seed(int(sys.argv[2]))  # other history in each process
    torch.rand(int(sys.argv[3]))
    run = lt.fine_tune(lt.profile("lab"), "lab-clip", loss="la", seed=0, epochs=1, progress=False)
    torch.save(run["test"]["logits"], sys.argv[1])
""")


def _run(tmp_path, name, history_seed, draws):
    out = tmp_path / f"{name}.pt"
    env = {"LT_CACHE_DIR": str(tmp_path / f"cache-{name}"), "LT_PROFILE": "lab", "TQDM_DISABLE": "1",
           "PYTHONHASHSEED": str(history_seed), "LT_THREADS": "1"}
    subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(history_seed), str(draws)], check=True,
                   env={**os.environ, **env}, timeout=600)
    return torch.load(out, weights_only=True)


def test_fine_tune_is_bit_identical_in_two_fresh_processes(tmp_path):
    first = _run(tmp_path, "a", 1, 10)
    second = _run(tmp_path, "b", 2, 12345)
    assert torch.equal(first, second)
